"""Models on disk, whether they fit this machine's memory, and getting new ones.

The memory estimate is deliberately simple (weights plus an allowance); `estimate_fit` is the one
function to swap for the long-context planner. Conversion and the starter model use MLX, so the
engine runs them on its thread; this module only describes and locates models.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from convert.partials import WorkFolder, clean_stale, work_folders
from mlx_model.assistant_config import recorded_drafter
from mlx_model.model_folder import has_chat_template as folder_has_chat_template

from .paths import models_dir

GIB = 1024 ** 3
MIB = 1024 ** 2
STARTER_LABEL = "Gemma 3 270M (base, completion only; not a chat model)"
RUNTIME_ALLOWANCE = 1 * GIB  # KV cache, prefill scratch and the app itself at a moderate context
SYSTEM_SHARE = 0.25  # of physical memory left to macOS and other apps
MAX_SPLIT_MACS = 4  # the model manager suggests splitting a model across at most this many Macs


class ModelManagerError(RuntimeError):
    """A model cannot be found, made or removed; the message says what to do."""


@dataclass(frozen=True)
class HubModel:
    repo_id: str
    label: str
    size_4bit: float  # GiB of the 4-bit conversion, approximately
    note: str = ""

    @property
    def variant(self) -> str:
        """The planner's name of the variant ("E2B", "26B-A4B", ...), from the repo id."""
        return self.repo_id.split("gemma-4-")[-1].removesuffix("-it").upper()


# GiB of the towers at 8 bits (the recipe never puts them lower): vision ~167 M + audio ~305 M parameters
# on E2B/E4B (transformers' Gemma4VisionConfig/Gemma4AudioConfig defaults), vision ~550 M on 26B-A4B/31B
# (model card).
TOWER_GIB = {"E2B": 0.467, "E4B": 0.467, "26B-A4B": 0.544, "31B": 0.544,
             "12B": 0.052}  # 12B: its embedders (vision 49.9 M + audio 2.5 M parameters, planner.py) at 8 bits
# 4-bit sizes with Gemma 4's recipe: mlx_model.planner.weight_bytes (text, exact) + TOWER_GIB; kept as numbers
# so this module stays free of MLX (tests/test_quant_recipe.py checks them against the planner).
HUB_MODELS = (
    HubModel("google/gemma-4-E2B-it", "Gemma 4 E2B instruct", 4.30, "recommended on 16 GB Macs"),
    HubModel("google/gemma-4-E4B-it", "Gemma 4 E4B instruct", 6.28, "24 GB or more"),
    HubModel("google/gemma-4-26B-A4B-it", "Gemma 4 26B-A4B instruct (MoE)", 15.84, "32 GB or more"),
    HubModel("google/gemma-4-31B-it", "Gemma 4 31B instruct", 19.19, "48 GB or more"),
    # last, so recommended_model's positions stay; its image and audio embedders stand in for towers
    HubModel("google/gemma-4-12B-it", "Gemma 4 12B instruct (images, video and audio)", 7.48, "16 GB or more"),
)
QUALITY_FILE = "quality.json"  # written by the converter's quality check (convert/quality.py)


def drafter_repo(repo_id: str) -> Optional[str]:
    """The hub repo of the MTP drafter Google publishes beside a Gemma 4 instruct model (`<repo>-assistant`),
    fetched and converted with it; None for other models (Gemma 3, base models, other publishers)."""
    owner, _, name = repo_id.partition("/")
    if owner != "google" or not name.lower().startswith("gemma-4-") or not name.lower().endswith("-it"):
        return None
    return f"{repo_id}-assistant"


@dataclass
class MemoryFit:
    required_bytes: int
    total_bytes: int
    fits: bool
    split_macs: Optional[int] = None  # fewest Macs of this memory that hold it split (docs/distributed.md)
    split_bytes: int = 0  # memory each of them needs then

    @property
    def summary(self) -> str:
        verdict = "fits" if self.fits else "too large"
        return f"needs ≈{format_size(self.required_bytes)} of {self.total_bytes / GIB:.0f} GB · {verdict}"

    @property
    def split_summary(self) -> str:
        """e.g. "Too large for this Mac · fits on 2 Macs like it (docs/distributed.md)"; empty when it fits
        this Mac or no split up to MAX_SPLIT_MACS Macs holds it."""
        if self.fits or not self.split_macs:
            return ""
        return f"Too large for this Mac · fits on {self.split_macs} Macs like it (docs/distributed.md)"

    @property
    def split_detail(self) -> str:
        """The memory per Mac behind `split_summary` (a tooltip)."""
        if not self.split_summary:
            return ""
        usable = usable_bytes(self.total_bytes) / GIB
        return (f"Split across {self.split_macs} Macs of {self.total_bytes / GIB:.0f} GB: ≈"
                f"{self.split_bytes / GIB:.1f} GiB on each, of {usable:.1f} GiB usable (one Mac alone needs "
                f"≈{self.required_bytes / GIB:.1f} GiB). "
                f"`python -m gemma4_mac plan --macs {self.split_macs}` gives the figures per context.")


def format_size(size_bytes: float) -> str:
    """A size as a person reads it: "310 MB" below 1 GB (never "0.0 GB"), "3.4 GB" above."""
    if size_bytes >= GIB - MIB // 2:  # 1023.6 MB reads as 1.0 GB, not "1024 MB"
        return f"{size_bytes / GIB:.1f} GB"
    if size_bytes >= MIB:
        return f"{size_bytes / MIB:.0f} MB"
    if size_bytes >= 1024:
        return f"{size_bytes / 1024:.0f} KB"
    return f"{int(size_bytes)} bytes"


@dataclass
class ModelEntry:
    path: Path
    name: str
    size_bytes: int
    fit: MemoryFit
    is_starter: bool = False
    has_chat_template: bool = True
    quality: Optional[dict] = None  # quality.json: the conversion against its source

    @property
    def label(self) -> str:
        return STARTER_LABEL if self.is_starter else self.name

    @property
    def quality_summary(self) -> str:
        """The conversion against its source on the built-in text, e.g. `same top token as the source 97% · KL
        0.004`; empty when it was not measured (or quality.json does not say)."""
        inputs = (self.quality or {}).get("inputs")
        text = inputs.get("text") if isinstance(inputs, dict) else None
        try:
            top1, kl = float(text["top1_agreement"]), float(text["mean_kl"])
        except (KeyError, TypeError, ValueError):
            return ""
        others = [kind for kind in ("image", "audio") if kind in inputs]
        summary = f"same top token as the source {top1:.0%} · KL {kl:.3f}"
        return summary + (f" (also checked on {' and '.join(others)})" if others else "")


def total_memory() -> int:
    import psutil

    return int(psutil.virtual_memory().total)


def weight_bytes(path: Path) -> int:
    """Bytes of a model folder's .safetensors files, its drafter's included (loaded with it)."""
    folders = [Path(path)]
    drafter = recorded_drafter(path, read_model_config(path))
    if drafter is not None:
        folders.append(drafter)
    return sum(f.stat().st_size for folder in folders for f in folder.glob("*.safetensors"))


def usable_bytes(total: int) -> int:
    """Memory a model may use on a Mac with `total` bytes (the rest is left to macOS and other apps)."""
    return int(total * (1 - SYSTEM_SHARE))


def estimate_fit(path: Path, total: Optional[int] = None) -> MemoryFit:
    """Whether a model folder fits this machine: weights plus an allowance against usable memory; when it does
    not, the fewest Macs of the same memory that hold it split (`split_fit`)."""
    total = total_memory() if total is None else total
    weights = weight_bytes(path)
    required = weights + RUNTIME_ALLOWANCE
    if required <= usable_bytes(total):
        return MemoryFit(required, total, True)
    config = read_model_config(path)
    macs, per_mac = split_fit(config, total, weights=weights) if config else (None, 0)
    return MemoryFit(required, total, False, macs, per_mac)


def hub_fit(model: HubModel, total: Optional[int] = None) -> MemoryFit:
    """Whether a downloadable variant's 4-bit conversion fits this machine, and if not on how many like it."""
    total = total_memory() if total is None else total
    required = int(model.size_4bit * GIB) + RUNTIME_ALLOWANCE
    if required <= usable_bytes(total):
        return MemoryFit(required, total, True)
    from mlx_model.planner import VARIANT_CONFIGS  # MLX is imported only for a model too large for this Mac

    raw = VARIANT_CONFIGS.get(model.variant)
    if raw is None:
        return MemoryFit(required, total, False)
    # the planner counts the text weights; the towers (8-bit) are whole on every Mac
    macs, per_mac = split_fit(raw, total, towers=int(TOWER_GIB.get(model.variant, 0.0) * GIB))
    return MemoryFit(required, total, False, macs, per_mac)


def split_fit(config: dict, total: int, *, weights: Optional[int] = None, towers: int = 0,
              max_macs: int = MAX_SPLIT_MACS) -> tuple[Optional[int], int]:
    """The fewest Macs (2..max_macs) with `total` bytes each that hold a model split across them (by heads,
    mlx_model/sharding.py, or by layers, mlx_model/pipeline.py: the smaller share) and the bytes each then
    needs, or (None, 0). `config`: a config.json's contents
    (or a text config); `weights`: its bytes on disk, shared out as the planner's split_plan does (else 4-bit
    weights are counted); `towers`: bytes held whole on a Mac. Split by heads, Macs counts that do not divide
    the attention heads (or neither divide nor are divided by the KV heads) are not used."""
    from mlx_model.config import ModelConfig, TextConfig
    from mlx_model.planner import split_plan

    if "text_config" not in config and "model_type" not in config:
        return None, 0
    try:
        text = (ModelConfig.from_dict(config).text_config if "text_config" in config
                else TextConfig.from_dict(config))
    except (ValueError, TypeError, KeyError):  # not a Gemma config the planner knows: no verdict
        return None, 0
    from mlx_model.sharding import ShardingError

    for macs in range(2, max_macs + 1):
        kv_heads = text.layer_kv_heads
        splits = ["layers"]
        if not (text.num_attention_heads % macs or any(heads % macs and macs % heads for heads in kv_heads)):
            splits.append("heads")
        shares = []
        for split in splits:
            try:
                shares.append(split_plan(text, 1024, macs, weights=weights, split=split).weights)
            except ShardingError:  # more Macs than the layers can be cut for
                continue
        if not shares:
            continue
        # the allowance stands for KV and scratch as on one Mac (the KV is divided too: on the safe side)
        per_mac = min(shares) + towers + RUNTIME_ALLOWANCE
        if per_mac <= usable_bytes(total):
            return macs, per_mac
    return None, 0


def read_model_config(path: Path) -> dict:
    try:
        return json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}


def is_model_folder(path: Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def is_starter_folder(path: Path) -> bool:
    meta = read_model_config(path).get("gemma4_mac", {})
    return bool(meta.get("starter")) or meta.get("display_name") == STARTER_LABEL or Path(path).name == "starter"


def has_chat_template(path: Path) -> bool:
    """Whether the folder's tokenizer knows a chat format (base models only continue text)."""
    return folder_has_chat_template(Path(path))


def unfinished_conversions(root: Optional[Path] = None) -> list[WorkFolder]:
    """Hidden work folders of conversions in the models folder: one being written now (`running`), or one
    left by a conversion that was killed, which takes disk space until the next conversion removes it."""
    return work_folders(models_dir() if root is None else Path(root))


def unfinished_bytes(root: Optional[Path] = None) -> int:
    """Disk space held by conversions that were killed (not by one running now)."""
    return sum(folder.size_bytes for folder in unfinished_conversions(root) if not folder.running)


def clean_unfinished_conversions(root: Optional[Path] = None) -> int:
    """Remove what killed conversions left in the models folder (a running one is kept); returns bytes
    freed."""
    return sum(folder.size_bytes for folder in clean_stale(models_dir() if root is None else Path(root)))


def read_quality(path: Path) -> Optional[dict]:
    """The converter's quality.json of a model folder, or None (not measured, or unreadable)."""
    try:
        report = json.loads((Path(path) / QUALITY_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return report if isinstance(report, dict) else None


def describe(path: Path, total: Optional[int] = None) -> ModelEntry:
    path = Path(path)
    meta = read_model_config(path).get("gemma4_mac", {})
    starter = is_starter_folder(path)
    name = meta.get("display_name") or path.name
    return ModelEntry(path, name, weight_bytes(path), estimate_fit(path, total), starter,
                      has_chat_template(path), read_quality(path))


def list_models(extra: tuple[Path | str, ...] = (), root: Optional[Path] = None) -> list[ModelEntry]:
    """Models in the app's models folder (and any `extra` folders), starter last."""
    root = models_dir() if root is None else Path(root)
    total = total_memory()
    seen, entries = set(), []
    candidates = sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []
    for path in [*candidates, *(Path(e).expanduser() for e in extra if e)]:
        resolved = path.resolve()
        if resolved in seen or not is_model_folder(path):
            continue
        seen.add(resolved)
        entries.append(describe(path, total))
    return sorted(entries, key=lambda e: (e.is_starter, e.name.lower()))


def destination_for(repo_id: str, bits: int = 4, root: Optional[Path] = None) -> Path:
    """Where the model manager puts the conversion of a hub model."""
    root = models_dir() if root is None else Path(root)
    return root / f"{repo_id.split('/')[-1].lower()}-{bits}bit"


def conversion_destination(name: str, bits: int = 4, root: Optional[Path] = None) -> Path:
    """A free folder in the models folder for converting the model called `name` (a repo id, a file name)."""
    root = models_dir() if root is None else Path(root)
    stem = name.split("/")[-1]
    stem = stem[:-5] if stem.lower().endswith(".gguf") else stem
    slug = re.sub(r"[^a-z0-9._]+", "-", stem.lower()).strip("-.") or "model"
    candidate, number = root / f"{slug}-{bits}bit", 2
    while candidate.exists():
        candidate, number = root / f"{slug}-{bits}bit-{number}", number + 1
    return candidate


def converted_from(source: Path | str, root: Optional[Path] = None) -> Optional[Path]:
    """A model in the models folder already converted from `source` (so adding it again converts nothing)."""
    root = models_dir() if root is None else Path(root)
    wanted = str(Path(source).expanduser())
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    for folder in folders:
        meta = read_model_config(folder).get("gemma4_mac")
        if isinstance(meta, dict) and meta.get("source") == wanted and is_model_folder(folder):
            return folder
    return None


def recommended_model(total: Optional[int] = None) -> HubModel:
    """The model to suggest for this machine: E2B up to 16 GB, E4B up to 32 GB, 26B-A4B beyond."""
    total = total_memory() if total is None else total
    if total <= 17 * GIB:
        return HUB_MODELS[0]
    if total <= 33 * GIB:
        return HUB_MODELS[1]
    return HUB_MODELS[2]


def delete_model(path: Path, root: Optional[Path] = None) -> None:
    """Delete a model folder the app made (refuses anything outside its models folder)."""
    root = (models_dir() if root is None else Path(root)).resolve()
    path = Path(path).resolve()
    if root not in path.parents:
        raise ModelManagerError(f"{path} is not in the app's models folder {root}; delete it in Finder instead.")
    shutil.rmtree(path)


def ensure_starter(root: Optional[Path] = None, progress: Optional[Callable[[Any], None]] = None) -> Path:
    """The offline starter model's folder, written on first use (MLX work: call on the engine thread);
    `progress` hears the converter's reports (convert.ConversionProgress) while it is built."""
    try:
        from convert.errors import ConversionError
        from convert.starter import ensure_starter_model
    except ImportError as error:
        raise ModelManagerError("No model is installed and the starter model is not part of this build "
                                f"({error}). Open the model manager to download a Gemma 4 model.") from error
    root = models_dir() if root is None else Path(root)
    try:
        return Path(ensure_starter_model(root, progress=progress))
    except ConversionError as error:  # the engine reports ModelManagerError to the window
        raise ModelManagerError(f"The offline starter model could not be prepared: {error}") from error
