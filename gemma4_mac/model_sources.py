"""Models the person already has: what a dropped or chosen path is, and what other apps keep on disk.

`inspect_path` says whether a folder or file is an MLX model the app runs where it lies, a Hugging Face
checkpoint or GGUF file to convert, or not usable (with the reason, before anything loads).
`scan_other_apps` lists Gemma models in Hugging Face's cache (`HF_HUB_CACHE`, `HF_HOME`) and LM Studio's
models folders. Both read only config.json, small JSON files, file names and sizes, never weights
(a GGUF's header is read when it is inspected on its own, not while scanning). Plain Python, no Qt, no MLX.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

from mlx_model.config import SUPPORTED_TYPES
from mlx_model.model_folder import is_base_model, missing_parts

MLX, CHECKPOINT, GGUF = "mlx", "checkpoint", "gguf"
HF_CACHE, LM_STUDIO = "Hugging Face cache", "LM Studio"
GGUF_ARCHITECTURES = ("gemma3", "gemma4")  # what convert/gguf_config.py reads
_SPLIT_GGUF = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)
_CHOOSE = ("Choose the folder that holds config.json and the .safetensors weights (an MLX model or a Hugging "
           "Face checkpoint), or a .gguf file.")


@dataclass(frozen=True)
class FoundModel:
    """A folder or file that is, or can become, a model.

    kind: MLX (runs where it lies), CHECKPOINT or GGUF (converted into the app's models folder), or "" when
    it is not a model at all. problem: why it cannot be used or converted ("" when it can).
    base_model: a GGUF without a chat template (it can only continue text).
    """

    path: Path
    kind: str
    name: str
    size_bytes: int = 0
    origin: str = ""
    problem: str = ""
    base_model: bool = False

    @property
    def usable(self) -> bool:
        return bool(self.kind) and not self.problem

    @property
    def needs_conversion(self) -> bool:
        return self.kind in (CHECKPOINT, GGUF)


def might_be_model(path: str | Path) -> bool:
    """Whether a dropped path goes to the model flow rather than to the chat as an attachment: folders,
    GGUF and safetensors files (none of which a chat can attach). Cheap: no file is opened."""
    path = Path(path)
    return path.is_dir() or path.suffix.lower() in (".gguf", ".safetensors")


def inspect_path(path: str | Path, origin: str = "", name: str = "") -> FoundModel:
    """What `path` is as a model, with the reason when it cannot be used. Reads config.json, the weight
    index and a GGUF's header; never weights."""
    path = Path(path).expanduser()
    if not path.exists():
        return _refused(path, path.name, origin, f"{path} does not exist (moved or deleted?).")
    if path.is_dir() and path.name.startswith("models--") and (path / "snapshots").is_dir():
        snapshot = hub_snapshot(path)  # a repo folder of the Hugging Face cache: use its current snapshot
        if snapshot is None:
            return _refused(path, repo_id_of(path), origin,
                            f"{path} holds no downloaded files of {repo_id_of(path)} yet.")
        return inspect_path(snapshot, origin or HF_CACHE, name or repo_id_of(path))
    hub_repo = _hub_repo_holding(path)
    if hub_repo is not None:  # a snapshot folder or a file in one: named after the repo, not the commit hash
        name, origin = name or (repo_id_of(hub_repo) if path.is_dir() else ""), origin or HF_CACHE
    try:
        if path.is_file():
            return _inspect_file(path, origin, name)
        return _inspect_folder(path, origin, name)
    except OSError as error:
        return _refused(path, name or path.name, origin,
                        f"{path} cannot be read ({error.strerror or error}).")


def _refused(path: Path, name: str, origin: str, problem: str, kind: str = "", size: int = 0) -> FoundModel:
    return FoundModel(path, kind, name, size, origin, problem)


def _inspect_file(path: Path, origin: str, name: str) -> FoundModel:
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        problem = (f"{path.name} is one weights file. Choose the folder that holds it together with its "
                   "config.json and tokenizer files.")
        return _refused(path, path.name, origin, problem)
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != b"GGUF":
        problem = f"{path.name} is not a model. {_CHOOSE}"
        if suffix == ".gguf":
            problem = (f"{path.name} is not a GGUF file (it does not start with the GGUF signature; an "
                       "unfinished download?).")
        return _refused(path, path.name, origin, problem)
    return inspect_gguf(path, origin, name)


def gguf_problem_from_name(path: Path) -> str:
    """Why a GGUF file cannot be converted, judged from its name alone ("" when the name is fine)."""
    split = _SPLIT_GGUF.search(path.name)
    if split and split.group(2) != "00001":
        return (f"{path.name} is one of {int(split.group(2))} parts of a split GGUF; this app converts "
                "single files. Join the parts with llama.cpp's `llama-gguf-split --merge`, then add the "
                "joined file.")
    if path.name.lower().startswith("mmproj"):
        return f"{path.name} is a vision projector (mmproj) that goes with a model, not a model itself."
    return ""


def inspect_gguf(path: Path, origin: str = "", name: str = "") -> FoundModel:
    """A GGUF file's header: architecture, tokenizer, chat template (about a second for a 262k vocabulary)."""
    from convert.errors import ConversionError
    from convert.gguf_reader import GGUFFile

    name = name or path.stem
    size = path.stat().st_size
    problem = gguf_problem_from_name(path)
    if problem:
        return _refused(path, name, origin, problem, GGUF, size)
    try:
        metadata = GGUFFile(path).metadata
    except (ConversionError, ValueError) as error:
        return _refused(path, name, origin, f"{path.name} cannot be read: {error}", GGUF, size)
    architecture = metadata.get("general.architecture")
    if architecture not in GGUF_ARCHITECTURES:
        problem = f"{path.name} is a {architecture or 'unnamed'} model; this app runs Gemma 4 and Gemma 3."
        return _refused(path, name, origin, problem, GGUF, size)
    if "tokenizer.ggml.tokens" not in metadata:
        problem = (f"{path.name} carries no vocabulary (tokenizer.ggml.tokens), so no tokenizer can be "
                   "rebuilt from it. Use a GGUF from the model's official or a well-known repo.")
        return _refused(path, name, origin, problem, GGUF, size)
    return FoundModel(path, GGUF, name, size, origin, base_model=not metadata.get("tokenizer.chat_template"))


def _read_json(path: Path) -> Optional[dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _gguf_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.gguf") if p.is_file() and not gguf_problem_from_name(p))


def _inspect_folder(path: Path, origin: str, name: str) -> FoundModel:
    name = shown = name or path.name  # shown in messages: a hub snapshot's repo id, not its commit hash
    if not (path / "config.json").is_file():
        ggufs = _gguf_files(path)
        if len(ggufs) == 1:
            return inspect_gguf(ggufs[0], origin, name)
        if ggufs:
            listed = ", ".join(p.name for p in ggufs[:4]) + (", …" if len(ggufs) > 4 else "")
            return _refused(path, name, origin,
                            f"{shown} holds {len(ggufs)} GGUF files ({listed}): add the one you want.")
        return _refused(path, name, origin,
                        f"{shown} has no config.json, so it is not a model folder. {_CHOOSE}")
    config = _read_json(path / "config.json")
    if config is None:
        return _refused(path, name, origin,
                        f"{path / 'config.json'} is not valid JSON; download or convert the model again.")
    meta = config.get("gemma4_mac") if isinstance(config.get("gemma4_mac"), dict) else {}
    name = meta.get("display_name") or name
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_TYPES:
        what = f"a {model_type} model" if isinstance(model_type, str) else "a config.json without model_type"
        return _refused(path, name, origin,
                        f"{shown} holds {what}; this app runs Gemma 4 and Gemma 3 models.")
    files, problem = _weights(path, shown)
    size = sum(f.stat().st_size for f in files)
    kind = MLX if ("quantization" in config or meta) else CHECKPOINT
    if problem:
        return _refused(path, name, origin, problem, kind, size)
    quantized = config.get("quantization_config")
    method = quantized.get("quant_method") if isinstance(quantized, dict) else None
    if method and "quantization" not in config:
        problem = (f"{shown} is quantized with {method}, which this app cannot read. Use the original "
                   "(bfloat16) checkpoint, or an MLX conversion of it.")
        return _refused(path, name, origin, problem, kind, size)
    missing = missing_parts(path, config)
    if missing:
        hint = (" A base model that only continues text needs no chat template: convert it with "
                "`python -m convert --base-model`." if any("chat template" in m for m in missing) else "")
        problem = (f"{shown} lacks {' and '.join(missing)}. Copy the missing files from the model's "
                   f"Hugging Face repo (its Files tab) into the folder.{hint}")
        return _refused(path, name, origin, problem, kind, size)
    return FoundModel(path, kind, name, size, origin, base_model=is_base_model(config))


def _weights(path: Path, shown: str) -> tuple[list[Path], str]:
    """The weight files and, when they are not all there, why (names and sizes only)."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        data = _read_json(index)
        weight_map = data.get("weight_map") if data else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            return [], f"{index.name} of {shown} has no valid weight_map; download the model again."
        names = sorted(set(weight_map.values()))
        present = [path / n for n in names if (path / n).is_file()]
        if len(present) < len(names):
            return present, (f"{shown} is incomplete: {len(names) - len(present)} of {len(names)} weight "
                             "files are missing (an unfinished download?). Download the model again.")
        return present, ""
    files = sorted(f for f in path.glob("*.safetensors") if f.is_file())
    if files:
        return files, ""
    if any(path.glob("*.bin")) or any(path.glob("*.pth")):
        return [], (f"{shown} has PyTorch .bin weights; this app reads .safetensors. Download the "
                    "safetensors files of the same repo.")
    return [], f"{shown} has a config.json but no .safetensors weights (an unfinished download?)."


# Hugging Face's cache ------------------------------------------------------------------------------------

def hf_hub_cache(environ: Optional[Mapping[str, str]] = None, home: Optional[Path] = None) -> Path:
    """Where huggingface_hub keeps downloads: HF_HUB_CACHE, else $HF_HOME/hub, else
    $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub (huggingface_hub's own order)."""
    environ = os.environ if environ is None else environ
    home = Path.home() if home is None else Path(home)
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if environ.get(key):
            return Path(environ[key]).expanduser()
    if environ.get("HF_HOME"):
        return Path(environ["HF_HOME"]).expanduser() / "hub"
    cache = Path(environ["XDG_CACHE_HOME"]).expanduser() if environ.get("XDG_CACHE_HOME") else home / ".cache"
    return cache / "huggingface" / "hub"


def display_path(path: Path) -> str:
    """`path` as a person reads it: under the home folder as ~/..."""
    try:
        return "~/" + str(Path(path).relative_to(Path.home()))
    except ValueError:
        return str(path)


def _hub_repo_holding(path: Path) -> Optional[Path]:
    """The `models--org--name` folder of a hub cache snapshot that `path` is (or lies directly in)."""
    for snapshot in (path, path.parent):
        if snapshot.parent.name == "snapshots" and snapshot.parent.parent.name.startswith("models--"):
            return snapshot.parent.parent
    return None


def repo_id_of(repo_folder: Path) -> str:
    """`models--google--gemma-4-E2B-it` -> `google/gemma-4-E2B-it`."""
    return repo_folder.name[len("models--"):].replace("--", "/")


def hub_snapshot(repo_folder: Path) -> Optional[Path]:
    """The snapshot folder `refs/main` points at, else the newest one (files in it link into blobs/)."""
    snapshots = repo_folder / "snapshots"
    try:
        ref = (repo_folder / "refs" / "main").read_text(encoding="utf-8").strip()
    except OSError:
        ref = ""
    if ref and (snapshots / ref).is_dir():
        return snapshots / ref
    try:
        candidates = [p for p in snapshots.iterdir() if p.is_dir()]
    except OSError:
        return None
    return max(candidates, key=lambda p: p.stat().st_mtime, default=None)


def _quick_gguf(path: Path, origin: str, name: str) -> FoundModel:
    """A GGUF listed from its name and size only (its header is read when the person picks it)."""
    return FoundModel(path, GGUF, name, path.stat().st_size, origin, gguf_problem_from_name(path))


def _candidates(folder: Path, origin: str, name: str) -> list[FoundModel]:
    """The model in `folder` (config.json) or each of its GGUF files, listed cheaply."""
    if (folder / "config.json").is_file():
        return [_inspect_folder(folder, origin, name)]
    ggufs = _gguf_files(folder)
    return [_quick_gguf(p, origin, f"{name} · {p.name}" if len(ggufs) > 1 else name) for p in ggufs]


def scan_hf_cache(root: Path) -> list[FoundModel]:
    """Gemma repos in a Hugging Face hub cache folder, each at its current snapshot."""
    found: list[FoundModel] = []
    for repo in sorted(root.glob("models--*")):
        if "gemma" not in repo.name.lower() or not repo.is_dir():
            continue
        snapshot = hub_snapshot(repo)
        if snapshot is not None:
            found += _candidates(snapshot, HF_CACHE, repo_id_of(repo))
    return found


def lm_studio_dirs(home: Optional[Path] = None) -> list[Path]:
    """LM Studio's models folders: ~/.lmstudio/models, and ~/.cache/lm-studio/models of older versions."""
    home = Path.home() if home is None else Path(home)
    return [home / ".lmstudio" / "models", home / ".cache" / "lm-studio" / "models"]


def scan_lm_studio(root: Path) -> list[FoundModel]:
    """Gemma models in an LM Studio models folder (publisher/repo/ holding GGUF files or an MLX folder)."""
    found: list[FoundModel] = []
    for publisher in sorted(p for p in root.iterdir() if p.is_dir()):
        for repo in sorted(p for p in publisher.iterdir() if p.is_dir()):
            if "gemma" in repo.name.lower():
                found += _candidates(repo, LM_STUDIO, f"{publisher.name}/{repo.name}")
    return found


def searched_places(environ: Optional[Mapping[str, str]] = None, home: Optional[Path] = None) -> list[Path]:
    """The folders `scan_other_apps` looks in."""
    return [hf_hub_cache(environ, home), *lm_studio_dirs(home)]


def scan_other_apps(environ: Optional[Mapping[str, str]] = None,
                    home: Optional[Path] = None) -> list[FoundModel]:
    """Gemma models in Hugging Face's cache and LM Studio's folders (those that exist), unreadable ones
    skipped; a folder reached through two roots is listed once."""
    hub, *lm_studio = searched_places(environ, home)
    scans = [(scan_hf_cache, hub)] + [(scan_lm_studio, folder) for folder in lm_studio]
    found, seen = [], set()
    for scan, root in scans:
        if not root.is_dir():
            continue
        try:
            entries = scan(root)
        except OSError:
            continue  # a folder we may not read (permissions, a disconnected drive): nothing to offer there
        for entry in entries:
            key = entry.path.resolve()
            if key not in seen:
                seen.add(key)
                found.append(entry)
    return found
