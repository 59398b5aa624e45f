"""Model folders and files shaped like what people have on disk, for the add-model tests (no weights inside:
the folders' .safetensors are sparse placeholders, the GGUF files hold metadata only).

`hub_repo` writes Hugging Face's cache layout: models--org--name/{refs/main, snapshots/<hash>/, blobs/} with
every snapshot file a relative symlink into blobs/, as huggingface_hub writes it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional

TEXT_CONFIG = {"model_type": "gemma4_text", "hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 512}
MLX_QUANTIZATION = {"group_size": 64, "bits": 4}


def model_folder(path: Path, *, mlx: bool = True, config: Optional[dict] = None, tokenizer: bool = True,
                 chat_template: bool = True, weights: int = 4096, shards: int = 1, drop_shard: bool = False,
                 name: str = "") -> Path:
    """A model folder: config.json, tokenizer files, a chat template and `shards` sparse weight files."""
    path.mkdir(parents=True, exist_ok=True)
    config = dict(TEXT_CONFIG if config is None else config)
    if mlx:
        config["quantization"] = MLX_QUANTIZATION
    if name:
        config["gemma4_mac"] = {"display_name": name}
    (path / "config.json").write_text(json.dumps(config))
    if tokenizer:
        (path / "tokenizer.json").write_text("{}")
        (path / "tokenizer_config.json").write_text("{}")
    if chat_template:
        (path / "chat_template.jinja").write_text("{{ messages }}")
    names = ["model.safetensors"] if shards == 1 else [f"model-{i:05d}-of-{shards:05d}.safetensors"
                                                        for i in range(1, shards + 1)]
    if shards > 1:
        (path / "model.safetensors.index.json").write_text(json.dumps(
            {"weight_map": {f"layer{i}.weight": n for i, n in enumerate(names)}}))
    for number, shard in enumerate(names):
        if drop_shard and number == len(names) - 1:
            continue
        with open(path / shard, "wb") as handle:
            handle.truncate(weights)
    return path


def gguf_file(path: Path, *, architecture: str = "gemma3", chat_template: Optional[str] = "{{ messages }}",
              tokens: bool = True) -> Path:
    """A GGUF file with metadata only: architecture, a small vocabulary, maybe a chat template."""
    import gguf

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name(path.stem)
    if tokens:
        vocabulary = ["<pad>", "<eos>", "<bos>", "<unk>", "a", "b"]
        writer.add_tokenizer_model("llama")
        writer.add_token_list(vocabulary)
        writer.add_token_scores([0.0] * len(vocabulary))
        writer.add_token_types([3, 3, 3, 3, 1, 1])
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def hub_repo(cache: Path, repo_id: str, build, *, revision: str = "", ref: bool = True) -> Path:
    """Write a repo into a hub cache: `build(folder)` makes the files, which then move into blobs/ and are
    linked from snapshots/<hash>/. Returns the snapshot folder."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    revision = revision or hashlib.sha1(repo_id.encode()).hexdigest()
    staging = repo / ".staging"
    build(staging)
    snapshot = repo / "snapshots" / revision
    blobs = repo / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    for file in sorted(p for p in staging.rglob("*") if p.is_file()):
        relative = file.relative_to(staging)
        blob = blobs / hashlib.sha256(str(relative).encode() + revision.encode()).hexdigest()
        file.rename(blob)
        link = snapshot / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for folder in sorted((p for p in staging.rglob("*") if p.is_dir()), reverse=True):
        folder.rmdir()
    staging.rmdir()
    if ref:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(revision)
    return snapshot
