"""`--calibrate`: DWQ (distilled weight quantization) of the low-bit scales and biases against the source.

Why DWQ: it tunes the quantized model's per-group scales and biases so that its next-token distributions
match the float model's (a KL loss on the teacher's top-k logits), which the field reports as the best
MLX 4-bit method (issue 21: Qwen3-0.6B perplexity 10.87 with DWQ, 11.41 GPTQ, 11.92 plain); AWQ/GPTQ
only look at one layer's outputs at a time. The packed 4-bit codes stay as they are: the files keep the
same format and size.

What runs where:
- mlx-lm's machinery does the training: `mlx_lm.quant.dwq.dwq_quantize` (its loss, batching, Adam loop,
  the choice of trainable parameters: the scales and biases of modules under 8 bits) on our Model, which
  follows mlx-lm's model protocol.
- Ours, because mlx-lm cannot: the teacher is the float source run one layer at a time from its files
  (convert/streamed.py) rather than loaded whole beside the student, and its top-k targets are computed
  once, kept in memory and looked up by sequence; the calibration texts ship with the package
  (mlx-lm downloads a dataset); a validation split decides whether the result is kept; the tuned scales
  and biases are written back into the converted shards; progress and cancellation go through Reporter.

Bounds: time ~ (1 teacher pass + EPOCHS training passes + 2 validation passes) over about 3,600 tokens;
memory ~ the quantized model, float32 Adam state for the trained scales and biases (3 x 4 bytes per group
of 64 weights), one batch of activations with its gradients, the targets (8 KB per token) and, for the
teacher, one float32 layer at a time.
"""

from __future__ import annotations

import io
import json
import time
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from .errors import ConversionError
from .progress import Reporter
from .quality import DATA_DIR, TextEncoder, source_model
from .streamed import HEAD_ROWS, Row, StreamedModel


@dataclass(frozen=True)
class CalibrationSettings:
    """Sizes and rates of one calibration (defaults tuned on Gemma 3 270M: scripts/bench_quant_quality.py)."""

    sequence_tokens: int = 128  # tokens per training sequence (a BOS plus 127 text tokens, and the next one)
    validation_sequences: int = 4  # held out to decide whether the result is kept
    train_sequences: Optional[int] = None  # at most this many training sequences (None: all the texts give)
    epochs: int = 8  # the validation KL still fell at 6 epochs and turned at 8 (Gemma 3 270M)
    batch_size: int = 2
    # 5e-6 on the 270M: validation KL 0.284 -> 0.149; 3e-6 slower, 1e-5 noisy (0.173), 2e-5 made it worse
    learning_rate: float = 5e-6
    top_k: int = 1024  # teacher logits kept per position (mlx-lm's choice)
    temperature: float = 1.0  # of the distillation loss; 1 matches the quality check's KL (mlx-lm's default: 2)
    seed: int = 0


class CalibrationError(ConversionError):
    """Calibration could not run (too little text, a model it cannot train); the message says what to do."""


def calibration_sequences(folder: Path, vocab_size: int, length: int) -> list[list[int]]:
    """The built-in calibration texts tokenized, cut into sequences of `length` + 1 tokens led by BOS."""
    encode = TextEncoder(folder, vocab_size, 2)
    texts = json.loads((DATA_DIR / "calibration_texts.json").read_text(encoding="utf-8"))["texts"]
    stream: list[int] = []
    for item in texts:
        stream += encode(item["text"] + "\n\n", limit=None)[1:]  # one stream, without the BOS encode adds
    bos = [encode.bos] if encode.bos is not None else []
    body = length + 1 - len(bos)
    return [bos + stream[start:start + body] for start in range(0, len(stream) - body + 1, body)]


def teacher_targets(source: Path, sequences: list[list[int]], top_k: int,
                    reporter: Reporter) -> dict[bytes, tuple]:
    """{input tokens (int32 [L] as bytes): (top-k logits [L, k], their ids [L, k])} of the float source."""
    model, weights = source_model(source)
    teacher = StreamedModel(model, weights, float32=True,
                            step=lambda label: reporter.report("calibrate", 0, 1, item=label,
                                                               message=f"Calibrating: source model, {label}"))
    inputs = [np.array(seq[:-1], dtype=np.int32) for seq in sequences]
    rows = [Row(ids, np.ones(len(ids), dtype=bool)) for ids in inputs]
    hidden = teacher.hidden(rows)
    logits_of = teacher.head_reader()
    vocab = teacher.vocab_size
    targets = {}
    for ids, h in zip(inputs, hidden):
        best_values = best_ids = None
        for start in range(0, vocab, HEAD_ROWS):
            chunk = logits_of(h, start, min(vocab, start + HEAD_ROWS))
            k = min(top_k, chunk.shape[-1])
            ids_in_chunk = mx.argpartition(-chunk, kth=k - 1, axis=-1)[:, :k]
            values = mx.take_along_axis(chunk, ids_in_chunk, axis=-1)
            ids_in_chunk = ids_in_chunk + start
            if best_values is not None:
                values = mx.concatenate([best_values, values], axis=-1)
                ids_in_chunk = mx.concatenate([best_ids, ids_in_chunk], axis=-1)
                keep = mx.argpartition(-values, kth=top_k - 1, axis=-1)[:, :top_k]
                values = mx.take_along_axis(values, keep, -1)
                ids_in_chunk = mx.take_along_axis(ids_in_chunk, keep, -1)
            best_values, best_ids = values, ids_in_chunk.astype(mx.int32)
            mx.eval(best_values, best_ids)
        targets[ids.tobytes()] = (best_values, best_ids)
    return targets


def _subset_kl(student_logits: mx.array, targets: tuple) -> mx.array:
    """KL(teacher || student) per position over the teacher's top-k tokens (both renormalised on them)."""
    values, ids = targets
    student = mx.take_along_axis(student_logits.astype(mx.float32), ids, axis=-1)
    teacher_logp = values - mx.logsumexp(values, axis=-1, keepdims=True)
    student_logp = student - mx.logsumexp(student, axis=-1, keepdims=True)
    return mx.sum(mx.exp(teacher_logp) * (teacher_logp - student_logp), axis=-1)


def validation_kl(model, sequences: list[list[int]], targets: dict) -> float:
    """Mean KL over the validation sequences (teacher top-k), the figure that decides what is kept."""
    total, count = 0.0, 0
    for seq in sequences:
        ids = np.array(seq[:-1], dtype=np.int32)
        kl = _subset_kl(model(mx.array(ids[None]))[0], targets[ids.tobytes()])
        total += float(mx.sum(kl).item())
        count += len(ids)
    return total / max(1, count)


def _dequantize(module) -> mx.array:
    return mx.dequantize(module.weight, module.scales, module.get("biases"), group_size=module.group_size,
                         bits=module.bits).astype(module.scales.dtype)


class _DenseQuantized(nn.Module):
    """A quantized linear or embedding with fixed codes whose scales and biases train, computed as
    dequantize-then-matmul: the function of mx.quantized_matmul, but by BLAS, several times faster on MLX's
    CPU backend (its quantized kernels are slow there). Costs one byte per weight for the codes.
    Carries bits/group_size/mode, so mlx-lm's dwq_quantize unfreezes its scales and biases like a
    QuantizedLinear's."""

    def __init__(self, module):
        super().__init__()
        self.bits, self.group_size, self.mode = module.bits, module.group_size, module.mode
        self.scales, self.biases = module.scales, module.biases
        unit = mx.dequantize(module.weight, mx.ones_like(module.scales), mx.zeros_like(module.biases),
                             group_size=module.group_size, bits=module.bits)
        self._codes = unit.astype(mx.uint8)  # the integer codes 0 .. 2^bits - 1
        self._packed = module.weight  # for mlx-lm's parameter count, which reads .weight of quantized modules
        self._bias = module.get("bias")
        self._embedding = isinstance(module, nn.QuantizedEmbedding)
        self.freeze()

    @property
    def weight(self) -> mx.array:
        return self._packed

    def _weight(self) -> mx.array:
        rows, width = self._codes.shape
        codes = self._codes.reshape(rows, width // self.group_size, self.group_size).astype(self.scales.dtype)
        return (codes * self.scales[..., None] + self.biases[..., None]).reshape(rows, width)

    def __call__(self, x: mx.array) -> mx.array:
        if self._embedding:
            codes = self._codes[x].reshape(*x.shape, -1, self.group_size).astype(self.scales.dtype)
            return (codes * self.scales[x][..., None] + self.biases[x][..., None]).reshape(*x.shape, -1)
        out = x @ self._weight().T
        return out + self._bias if self._bias is not None else out

    def as_linear(self, x: mx.array) -> mx.array:
        return x @ self._weight().T


def _cpu_training_modules(model) -> list[tuple[str, nn.Module]]:
    """On MLX's CPU backend: modules DWQ leaves alone (8-bit) become float (the same function), the 4-bit
    linears and embeddings it trains become _DenseQuantized. Returns the swapped-out originals."""
    swapped, replacements = [], []
    for path, module in model.named_modules():
        if not isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding)) or module.mode != "affine":
            continue
        if module.bits < 8:
            replacement = _DenseQuantized(module)
        elif isinstance(module, nn.QuantizedEmbedding):
            replacement = nn.Embedding(*_dequantize(module).shape)
            replacement.weight = _dequantize(module)
        else:
            weight = _dequantize(module)
            replacement = nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in module)
            replacement.update({"weight": weight, **({"bias": module.bias} if "bias" in module else {})})
        replacement.freeze()  # only the low-bit scales and biases train (dwq_quantize unfreezes those)
        swapped.append((path, module))
        replacements.append((path, replacement))
    if replacements:
        model.update_modules(tree_unflatten(replacements))
    return swapped


def _dense_training() -> bool:
    """Whether to train through _DenseQuantized stand-ins: on MLX's CPU backend, where they are faster."""
    return mx.default_device() == mx.cpu


def _restore_modules(model, swapped: list[tuple[str, nn.Module]]) -> None:
    """Put the quantized modules back, carrying the scales and biases trained in their stand-ins."""
    stand_ins = dict(model.named_modules())
    for path, original in swapped:
        trained = stand_ins[path]
        if isinstance(trained, _DenseQuantized):
            original.scales, original.biases = trained.scales, trained.biases
    model.update_modules(tree_unflatten(swapped))


def calibrate_folder(source: Path, folder: Path, reporter: Reporter,
                     settings: Optional[CalibrationSettings] = None) -> dict[str, Any]:
    """DWQ-calibrate the quantized model in `folder` against `source`; rewrites its scales/biases in place.

    Returns a summary (recorded in quality.json): tokens, steps, validation KL before and after, kept or not.
    """
    from mlx_lm.quant import dwq
    import mlx.optimizers as optimizers

    from mlx_model.loader import load_model

    settings = settings or CalibrationSettings()
    started = time.time()
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    vocab = (config.get("text_config") or config)["vocab_size"]
    sequences = calibration_sequences(folder, vocab, settings.sequence_tokens)
    if len(sequences) < settings.validation_sequences + settings.batch_size:
        raise CalibrationError(f"The calibration texts give only {len(sequences)} sequences of "
                               f"{settings.sequence_tokens} tokens; convert without --calibrate.")
    stride = len(sequences) // settings.validation_sequences  # held-out sequences spread over the texts
    valid = sequences[::stride][: settings.validation_sequences]
    train = [seq for seq in sequences if not any(seq is held for held in valid)][: settings.train_sequences]
    reporter.report("calibrate", 0, 1, message="Calibrating: the source model's predictions")
    targets = teacher_targets(source, valid + train, settings.top_k, reporter)
    mx.clear_cache()

    model = load_model(folder)
    model.freeze()
    swapped = _cpu_training_modules(model) if _dense_training() else []
    original = {name: value for name, value in tree_flatten(model.parameters())
                if name.endswith((".scales", ".biases"))}
    dtype = next(iter(original.values())).dtype if original else mx.float32
    per_epoch = len(train) // settings.batch_size
    steps, done = settings.epochs * per_epoch, [0]

    def target_fn(batch: mx.array, index: int, split: str):
        if split == "train":
            reporter.report("calibrate", done[0], steps, item=f"step {done[0] + 1}",
                            message=f"Calibrating: step {done[0] + 1} of {steps}")
            done[0] += 1
        else:
            reporter.check_cancel()
        rows = [targets[np.array(row, dtype=np.int32).tobytes()] for row in batch]
        return mx.stack([values for values, _ in rows]), mx.stack([ids for _, ids in rows])

    # One epoch per dwq_quantize call (the optimizer's state carries over); the validation sequences pick the
    # epoch kept, so a calibration that starts to overfit the few built-in texts stops where it was best.
    optimizer = optimizers.Adam(learning_rate=settings.learning_rate, bias_correction=True)
    history = [validation_kl(model, valid, targets)]
    best = None
    for epoch in range(settings.epochs):
        try:  # mlx-lm's bars and prints would interleave with our progress line: Reporter speaks instead
            with _quiet(dwq):
                dwq.dwq_quantize(model, target_fn, optimizer, [(seq, 0) for seq in train],
                                 [(seq, 0) for seq in valid], batch_size=settings.batch_size,
                                 max_seq_length=settings.sequence_tokens + 1, seed=settings.seed + epoch,
                                 dtype=dtype, temperature=settings.temperature)
        except (ValueError, RuntimeError) as error:
            raise CalibrationError(f"Calibration could not train this model ({error}); convert without "
                                   "--calibrate.") from error
        model.eval()
        history.append(validation_kl(model, valid, targets))
        if history[-1] < min(history[:-1]):
            best = {name: mx.array(value) for name, value in tree_flatten(model.trainable_parameters())}
    if best is not None:
        model.load_weights(list(best.items()), strict=False)
    _restore_modules(model, swapped)
    kept = best is not None
    tuned = {name: value for name, value in tree_flatten(model.parameters()) if name in original}
    if kept:
        _write_back(folder, tuned)
    before, after = history[0], min(history)
    summary = {"method": "DWQ (mlx-lm dwq_quantize, teacher streamed from the source)",
               "train_tokens": len(train) * settings.sequence_tokens, "epochs": settings.epochs,
               "steps": steps, "learning_rate": settings.learning_rate,
               "trained_tensors": len(_changed(original, tuned)),
               "validation_kl_by_epoch": [round(kl, 5) for kl in history],
               "validation_kl_before": round(before, 5), "validation_kl_after": round(after, 5), "kept": kept,
               "seconds": round(time.time() - started, 1)}
    reporter.report("calibrate", steps, steps, message="Calibration " + ("kept" if kept else
                    "did not improve the validation figure; the plain scales are kept"))
    return summary


@contextmanager
def _quiet(dwq_module) -> Iterator[None]:
    """mlx-lm's progress bars off and its prints (stdout) dropped, for the block: Reporter reports instead."""
    from tqdm import tqdm

    class SilentBar(tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "disable": True})

    bar = dwq_module.tqdm
    dwq_module.tqdm = SilentBar
    try:
        with redirect_stdout(io.StringIO()):
            yield
    finally:
        dwq_module.tqdm = bar


def _changed(original: dict[str, mx.array], tuned: dict[str, mx.array]) -> list[str]:
    return [name for name, value in tuned.items() if not mx.array_equal(value, original[name]).item()]


def _write_back(folder: Path, tuned: dict[str, mx.array]) -> None:
    """Replace the tuned tensors in the folder's shards (each shard rewritten beside itself, then renamed)."""
    for shard in sorted(folder.glob("*.safetensors")):
        tensors = dict(mx.load(str(shard)))
        hits = [name for name in tensors if name in tuned]
        if not hits:
            continue
        for name in hits:
            tensors[name] = tuned[name].astype(tensors[name].dtype)
        partial = shard.with_name(f"{shard.stem}.partial.safetensors")  # MLX insists on the suffix
        mx.save_safetensors(str(partial), tensors, metadata={"format": "mlx"})
        del tensors
        partial.replace(shard)

