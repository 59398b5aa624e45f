"""The quality gate: a converted model against its source, teacher-forced on built-in inputs.

Inputs (package data, convert/data/): short texts in seven languages and two programming languages
(about 650 tokens), plus one picture for models with a vision tower and one spoken sentence for models
with an audio tower (synthesised with espeak-ng: `espeak-ng -s 160 -w speech.wav "The train to the coast
leaves at nine, and the weather should be sunny."`, resampled to 16 kHz FLAC).

Both models read the same batch one layer at a time (convert/streamed.py): the source in float32, the
converted model as stored. Per input kind we report mean KL(source || converted) per token and top-1
agreement, over all positions and over the "decisive" ones, where the source puts at least half its
probability on one token. A top-1 flip where the source hesitates between near-equal tokens is not an
error, and a model with near-uniform predictions (random test weights) has no decisive positions, so
the top-1 rule applies only with enough decisive positions; KL applies always.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from .errors import ConversionError
from .progress import Reporter
from .streamed import HEAD_ROWS, Row, StreamedModel, float_skeleton, read_config
from .weights import DequantizedWeights, FolderWeights, GGUFWeights

QUALITY_FILE = "quality.json"
DATA_DIR = Path(__file__).resolve().parent / "data"
DECISIVE_PROBABILITY = 0.5
_IMAGE_SOFT_TOKENS = 70  # the smallest budget Gemma 4 was trained with keeps the check quick
_MAX_TEXT_TOKENS = 160
IMAGE_PROMPT = ("Look at this picture.", "It shows a small red house with a brown roof and a white window, "
                "a green tree and a yellow sun in a blue sky.")
AUDIO_PROMPT = ("Listen to this recording.", "A voice says that the train to the coast leaves at nine and "
                "that the weather should be sunny.")


@dataclass(frozen=True)
class QualityThresholds:
    """Refuse a conversion whose mean KL per token exceeds max_kl, or whose top-1 agreement on decisive
    positions is below min_top1 (judged only with at least min_decisive such positions).

    Set on the real Gemma 3 270M (built-in text, 657 tokens, 278 decisive; mean KL / decisive top-1):
    8-bit 0.002 / 100% (bfloat16 scales and activations: 0.009 / 99.6%), 4-bit recipe 0.26 / 90.7%,
    4-bit uniform 0.77 / 77.7%, 3-bit uniform 4.0 / 27%, 2-bit uniform 14.8 / 0.7%. These pass 8 bits and
    the recipe and refuse uniform 4 bits and below on this small, quantization-sensitive model (its
    perplexity on Pride and Prejudice goes 19.1 -> 27.1 at uniform 4 bits); models that break the way the
    field reports (garbage output) are several nats of KL away.
    """

    max_kl: float = 0.5
    min_top1: float = 0.85
    min_decisive: int = 48


class QualityCheckError(ConversionError):
    """The quality check itself could not run on this model; the message says why."""


class QualityGateError(ConversionError):
    """The converted model is too far from its source; `.report` holds the figures."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


# --- inputs ------------------------------------------------------------------------------------------

def quality_texts() -> list[dict]:
    """The built-in texts: [{"language": ..., "text": ...}]."""
    return json.loads((DATA_DIR / "quality_texts.json").read_text(encoding="utf-8"))["texts"]


class TextEncoder:
    """The converted model's tokenizer, or (a folder without one, e.g. a test checkpoint) the text's bytes."""

    def __init__(self, folder: Path, vocab_size: int, bos: Optional[int]):
        from mlx_model.tokenizer import TokenizerLoadError, load_tokenizer

        self.vocab_size, self.bos, self.note = vocab_size, bos, "tokenizer"
        try:
            self.tokenizer = load_tokenizer(folder)
        except (TokenizerLoadError, ValueError, OSError) as error:
            self.tokenizer, self.note = None, f"bytes as token ids (the tokenizer does not load: {error})"
        if self.tokenizer is None and self.note == "tokenizer":
            self.note = "bytes as token ids (no tokenizer in the folder)"
        if self.tokenizer is not None and self.tokenizer.bos_token_id is not None:
            self.bos = self.tokenizer.bos_token_id

    def __call__(self, text: str, limit: Optional[int] = _MAX_TEXT_TOKENS) -> list[int]:
        """BOS and the ids of `text` (at most `limit` of them)."""
        if self.tokenizer is not None:
            ids = self.tokenizer.encode(text, add_special_tokens=False)
        else:
            ids = [3 + byte % (self.vocab_size - 3) for byte in text.encode("utf-8")]
        return ([self.bos] if self.bos is not None else []) + ids[:limit]


def _media_row(encode: TextEncoder, prompt: tuple[str, str], opener: int, slot: int, count: int, closer: int,
               vocab: int) -> tuple[list[int], int]:
    """bos + prompt + <open> + count slots + <close> + description; the index from which to score."""
    marks = [opener] if opener < vocab else []
    ends = [closer] if closer < vocab else []
    head = encode(prompt[0]) + marks + [slot] * count + ends
    return head + encode(prompt[1])[1:], len(head) - 1


def _row(ids: list[int], start: int, kind: str = "text", media: Optional[dict] = None) -> Row:
    scored = np.zeros(len(ids), dtype=bool)
    scored[start:] = True
    return Row(np.array(ids, dtype=np.int32), scored, kind, media or {})


def gate_rows(folder: Path, model) -> tuple[list[Row], str]:
    """The built-in inputs for `model` (a skeleton: which towers it has), and how the text was tokenized."""
    config = model.config
    text = config.text_config
    encode = TextEncoder(folder, text.vocab_size, getattr(config, "bos_token_id", None) or 2)
    rows = [_row(encode(item["text"]), 0) for item in quality_texts()]
    if model.model.has_vision:
        from mlx_model.image_processor import ImageProcessor

        vision = config.vision_config or {}
        processor = ImageProcessor(max_soft_tokens=_IMAGE_SOFT_TOKENS,
                                   patch_size=vision.get("patch_size") or 16,
                                   pooling_kernel_size=vision.get("pooling_kernel_size") or 3,
                                   model_patches=config.is_unified)  # 12B: 48-pixel patches, no tower
        pixels, positions, count = processor.preprocess_one(str(DATA_DIR / "quality_image.png"))
        ids, start = _media_row(encode, IMAGE_PROMPT, config.boi_token_id, config.image_token_id, count,
                                config.eoi_token_id, text.vocab_size)
        media = {"pixel_values": pixels[None], "position_ids": positions[None]}
        rows.append(_row(ids, start, "image", media))
    if model.model.has_audio:
        from mlx_model.audio_features import AudioFeatureExtractor, WaveformFrameExtractor, num_audio_soft_tokens
        from mlx_model.audio_io import load_audio

        samples, _ = load_audio(str(DATA_DIR / "quality_speech.flac"))
        if config.is_unified:  # 12B: waveform frames straight into its embedder
            extractor = WaveformFrameExtractor()
            count = extractor.num_soft_tokens(len(samples))
        else:
            extractor, count = AudioFeatureExtractor(), num_audio_soft_tokens(len(samples))
        features, mask = extractor([samples])
        ids, start = _media_row(encode, AUDIO_PROMPT, config.boa_token_id, config.audio_token_id,
                                count, config.eoa_token_id, text.vocab_size)
        rows.append(_row(ids, start, "audio", {"features": features, "mask": mask}))
    return rows, encode.note


# --- figures -----------------------------------------------------------------------------------------

class _Softmax:
    """Running logsumexp of logits seen a vocabulary slice at a time (and the largest logit and its token)."""

    def __init__(self, logits: mx.array, start: int):
        self.peak = mx.max(logits, axis=-1)
        self.total = mx.sum(mx.exp(logits - self.peak[:, None]), axis=-1)
        self.best, self.token = self.peak, mx.argmax(logits, axis=-1) + start

    def add(self, logits: mx.array, start: int) -> mx.array:
        """Take in a slice; returns the factor by which sums over earlier slices must be rescaled."""
        chunk_max = mx.max(logits, axis=-1)
        better = chunk_max > self.best
        self.token = mx.where(better, mx.argmax(logits, axis=-1) + start, self.token)
        self.best = mx.maximum(self.best, chunk_max)
        peak = mx.maximum(self.peak, chunk_max)
        rescale = mx.exp(self.peak - peak)
        self.total = self.total * rescale + mx.sum(mx.exp(logits - peak[:, None]), axis=-1)
        self.peak = peak
        return rescale

    @property
    def logsumexp(self) -> mx.array:
        return self.peak + mx.log(self.total)


def compare_heads(reference: StreamedModel, reference_hidden: mx.array, candidate: StreamedModel,
                  candidate_hidden: mx.array) -> dict[str, np.ndarray]:
    """Per position: KL(reference || candidate) of the next-token distributions, top-1 agreement, and whether
    the reference is decisive. Both heads are read a slice of the vocabulary at a time (online softmax), so
    neither the heads nor the [positions, vocabulary] logits are ever held whole."""
    reference_logits, candidate_logits = reference.head_reader(), candidate.head_reader()
    vocab = reference.vocab_size
    ours = theirs = weighted = None
    for start in range(0, vocab, HEAD_ROWS):
        stop = min(vocab, start + HEAD_ROWS)
        z_ref = reference_logits(reference_hidden, start, stop)
        z_cand = candidate_logits(candidate_hidden, start, stop)
        if ours is None:
            ours, theirs = _Softmax(z_ref, start), _Softmax(z_cand, start)
            weighted = mx.sum(mx.exp(z_ref - ours.peak[:, None]) * (z_ref - z_cand), axis=-1)
        else:
            rescale = ours.add(z_ref, start)
            theirs.add(z_cand, start)
            weighted = weighted * rescale + mx.sum(mx.exp(z_ref - ours.peak[:, None]) * (z_ref - z_cand),
                                                   axis=-1)
        mx.eval(ours.peak, ours.total, ours.best, ours.token, theirs.peak, theirs.total, theirs.token,
                weighted)
    # KL = sum p (z - z') - lse + lse', with p = exp(z - lse)
    kl = weighted / ours.total - ours.logsumexp + theirs.logsumexp
    decisive = ours.best - ours.logsumexp >= float(np.log(DECISIVE_PROBABILITY))
    return {"kl": np.array(kl), "agree": np.array(ours.token == theirs.token), "decisive": np.array(decisive)}


def summarise(kl: np.ndarray, agree: np.ndarray, decisive: np.ndarray) -> dict[str, Any]:
    """Means over the positions of one kind of input."""
    n, sure = len(kl), int(decisive.sum())
    return {"positions": n, "top1_agreement": round(float(agree.mean()), 4),
            "mean_kl": round(float(kl.mean()), 5), "decisive_positions": sure,
            "decisive_top1_agreement": round(float(agree[decisive].mean()), 4) if sure else None}


def source_model(source: Path):
    """(skeleton, WeightSource) of a conversion source: a checkpoint folder or a GGUF file."""
    if Path(source).is_file():
        from .gguf_config import config_from_gguf
        from .gguf_reader import GGUFFile

        model = float_skeleton(config_from_gguf(GGUFFile(source)))
        return model, GGUFWeights(Path(source), model.sanitize)
    model = float_skeleton(read_config(source))
    return model, FolderWeights(Path(source), model.sanitize)


def converted_model(folder: Path):
    """(float skeleton, WeightSource) of a converted model folder, quantized weights dequantized as read."""
    model = float_skeleton(read_config(folder))
    weights = FolderWeights(Path(folder), model.sanitize)
    shapes = {name: tuple(value.shape) for name, value in tree_flatten(model.parameters())}
    return model, DequantizedWeights(weights, shapes)


def measure(source: Path, converted: Path, reporter: Optional[Reporter] = None) -> dict[str, Any]:
    """Figures of `converted` against `source` (float32) on the built-in inputs, per kind of input."""
    reporter = reporter or Reporter(None, None)
    reference_skeleton, reference_weights = source_model(source)
    candidate_skeleton, candidate_weights = converted_model(converted)
    rows, tokens = gate_rows(converted, candidate_skeleton)
    layers = len(candidate_skeleton.language_model.layers)
    steps, done = 2 * (layers + 1) + 1, [0]

    def step(label: str, which: str):
        reporter.report("quality", done[0], steps, item=label,
                        message=f"Checking quality: {which} model, {label}")
        done[0] += 1

    reference = StreamedModel(reference_skeleton, reference_weights, float32=True,
                              step=lambda label: step(label, "source"))
    candidate = StreamedModel(candidate_skeleton, candidate_weights,
                              step=lambda label: step(label, "converted"))
    positions = [mx.array(np.flatnonzero(row.scored)) for row in rows]
    reference_hidden = mx.concatenate([h[p] for h, p in zip(reference.hidden(rows), positions)])
    candidate_hidden = mx.concatenate([h[p] for h, p in zip(candidate.hidden(rows), positions)])
    step("comparing predictions", "both")
    per_position = compare_heads(reference, reference_hidden, candidate, candidate_hidden)
    kinds = np.concatenate([[row.kind] * int(row.scored.sum()) for row in rows])
    figures = {kind: summarise(*(per_position[key][kinds == kind] for key in ("kl", "agree", "decisive")))
               for kind in dict.fromkeys(row.kind for row in rows)}
    reporter.report("quality", steps, steps, message="Quality measured")
    return {"inputs": figures, "tokens": tokens}


def verdict(figures: dict[str, Any], thresholds: QualityThresholds) -> list[str]:
    """Sentences naming each threshold the figures miss (empty: the conversion passes)."""
    failures = []
    for kind, row in figures["inputs"].items():
        if row["mean_kl"] > thresholds.max_kl:
            failures.append(f"on the built-in {kind} its mean KL divergence from the source is "
                            f"{row['mean_kl']:.3f} per token (at most {thresholds.max_kl} allowed)")
        agreement = row["decisive_top1_agreement"]
        if row["decisive_positions"] >= thresholds.min_decisive and agreement < thresholds.min_top1:
            failures.append(f"on the built-in {kind} it picks the source's top token at only {agreement:.1%} "
                            f"of the {row['decisive_positions']} positions where the source is sure "
                            f"(at least {thresholds.min_top1:.0%} needed)")
    return failures


def describe_quality(report: dict[str, Any]) -> str:
    """One line per kind of input: the figures of quality.json for a person."""
    lines = []
    for kind, row in report["inputs"].items():
        sure = row["decisive_top1_agreement"]
        decisive = f", {sure:.1%} where the source is sure" if sure is not None else ""
        lines.append(f"Quality against the source on the built-in {kind} ({row['positions']} tokens): "
                     f"same top token {row['top1_agreement']:.1%}{decisive}; mean KL {row['mean_kl']:.4f}")
    return "\n".join(lines)


def check_quality(source: Path, converted: Path, reporter: Reporter, *, settings: dict[str, Any],
                  thresholds: Optional[QualityThresholds] = None, advice: str = "") -> dict[str, Any]:
    """Measure, write quality.json into `converted`, and raise QualityGateError when a threshold is missed.

    settings: how the model was converted (recorded); advice: what to try instead, for the refusal message.
    """
    thresholds = thresholds or QualityThresholds()
    started = time.time()
    try:
        figures = measure(source, converted, reporter)
    except (KeyError, ValueError, RuntimeError) as error:  # e.g. a tensor the source lacks, an MLX error
        raise QualityCheckError(f"The converted model could not be checked against its source ({error}); "
                                "nothing was kept. Convert with --skip-quality-check to keep it unchecked.") from error
    failures = verdict(figures, thresholds)
    report = {"version": 1, "passed": not failures, **figures, "thresholds": asdict(thresholds),
              "reference": "the source in float32, run layer by layer", "settings": settings,
              "seconds": round(time.time() - started, 1)}
    (Path(converted) / QUALITY_FILE).write_text(json.dumps(report, indent=2), encoding="utf-8")
    if failures:
        raise QualityGateError("The converted model was refused and not kept: " + "; ".join(failures) + ". "
                               + advice, report)
    return report
