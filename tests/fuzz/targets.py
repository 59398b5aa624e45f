"""Fuzz targets: bytes in, each reader's parse, and only that reader's own error allowed out.

A target returns normally when the input parsed or was refused with the reader's specific error;
anything else (another exception type) is a crash. Shared by the hypothesis properties
(tests/test_hostile_properties.py) and the time-bounded fuzzers (`make fuzz`, tests/fuzz/run.py).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Callable

_SCRATCH = Path(tempfile.mkdtemp(prefix="gemma4-fuzz-"))
atexit.register(shutil.rmtree, _SCRATCH, ignore_errors=True)  # each fuzzing process cleans up after itself


def _as_file(data: bytes, suffix: str) -> Path:
    """Readers that take paths get the bytes in a scratch file (one per process, rewritten each run)."""
    path = _SCRATCH / f"input-{os.getpid()}{suffix}"
    path.write_bytes(data)
    return path


def image(data: bytes) -> None:
    """open_image, then the conversions and sizing the processor does before resizing."""
    from mlx_model.image_processor import ImageLoadError, ImageProcessor, ImageProcessorError, open_image, to_rgb_array

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a broken EXIF tag is a warning by design
            picture = open_image(data, name="fuzz.png")
        rgb = to_rgb_array(picture)
        ImageProcessor(max_soft_tokens=70).target_size(rgb.shape[0], rgb.shape[1])
    except (ImageLoadError, ImageProcessorError):
        pass


def audio(data: bytes) -> None:
    """load_audio on encoded bytes, limited to 30 s so a mutated length field cannot run for long."""
    from mlx_model.audio_io import AudioLoadError, load_audio

    try:
        load_audio(data, max_seconds=30.0, name="fuzz.wav")
    except AudioLoadError:
        pass


def video(data: bytes) -> None:
    """load_video with 4 frames (decode, sample, preprocess at 70 soft tokens)."""
    from mlx_model.video import VideoLoadError, load_video

    try:
        load_video(_as_file(data, ".mp4"), num_frames=4)
    except VideoLoadError:
        pass


def pdf(data: bytes) -> None:
    """Page count and the text of the first pages, as attaching a PDF does."""
    from gemma4_mac.documents import DocumentError, extract_pdf_pages, pdf_page_count

    path = _as_file(data, ".pdf")
    try:
        pdf_page_count(path)
        extract_pdf_pages(path, max_pages=3)
    except DocumentError:
        pass


def text(data: bytes) -> None:
    """Text files and pastes: the binary check and decoding never fail, whatever the bytes."""
    from gemma4_mac.documents import decode_text, estimate_tokens, looks_binary

    looks_binary(data)
    estimate_tokens(decode_text(data).text)


def gguf(data: bytes) -> None:
    """The GGUF header and tensor directory, and every small tensor dequantized."""
    from convert.errors import GGUFFormatError
    from convert.gguf_reader import GGUFFile

    try:
        parsed = GGUFFile(_as_file(data, ".gguf"))
        for name, info in parsed.tensors.items():
            if info.nbytes <= 1 << 20:
                parsed.read(name)
    except GGUFFormatError:
        pass


def safetensors(data: bytes) -> None:
    """The model loader's weight reading (mx.load) on a folder holding this file as model.safetensors."""
    from mlx_model.loader import ModelLoadError, read_weights

    folder = _SCRATCH / f"model-{os.getpid()}"
    folder.mkdir(exist_ok=True)
    (folder / "model.safetensors").write_bytes(data)
    try:
        weights = read_weights(folder)
        for array in weights.values():
            if array.size <= 4096:
                array.tolist()  # touch the data: MLX maps it lazily
    except ModelLoadError:
        pass


def config(data: bytes) -> None:
    """config.json as the loader reads and checks it (every value against its field's type and range)."""
    from mlx_model.loader import ModelLoadError, parse_config, read_config

    folder = _SCRATCH / f"config-{os.getpid()}"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_bytes(data)
    try:
        parse_config(folder, read_config(folder))
    except ModelLoadError:
        pass


def hf_header(data: bytes) -> None:
    """The converter's safetensors header reader (length field, dtypes, shapes, offsets)."""
    from convert.errors import CheckpointIndexError
    from convert.hf_source import safetensors_layout

    try:
        safetensors_layout(_as_file(data, ".safetensors"))
    except CheckpointIndexError:
        pass


TARGETS: dict[str, Callable[[bytes], None]] = {
    "image": image, "audio": audio, "video": video, "pdf": pdf, "text": text, "gguf": gguf,
    "safetensors": safetensors, "config": config, "hf_header": hf_header,
}


def seed_inputs(name: str) -> list[bytes]:
    """Valid inputs each fuzzer starts from."""
    from tests.fuzz import seeds

    return {
        "image": lambda: [seeds.png(), seeds.png(mode="RGBA"), seeds.png(mode="P"), seeds.jpeg()],
        "audio": lambda: [seeds.wav(), seeds.wav(channels=2, rate=44_100), seeds.encoded_audio("flac"),
                          seeds.encoded_audio("mp3")],
        "video": lambda: [seeds.mp4()],
        "pdf": lambda: [seeds.pdf(), seeds.encrypted_pdf()],
        "text": lambda: ["plain text\n".encode(), "café ünïcode ✓".encode("utf-8"), "café".encode("cp1252"),
                         "utf16 text".encode("utf-16")],
        "gguf": lambda: [seeds.gguf()],
        "safetensors": lambda: [seeds.safetensors()],
        "config": lambda: [seeds.config_json(), seeds.config_json(multimodal=True)],
        "hf_header": lambda: [seeds.safetensors()],
    }[name]()
