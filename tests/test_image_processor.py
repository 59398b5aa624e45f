"""Image preprocessing parity with transformers' Gemma4 image processors, safe loading, prompt expansion.

Reference: `AutoProcessor` uses the torchvision `Gemma4ImageProcessor` whenever torchvision is installed. Its
code is line for line that of `Gemma4ImageProcessorPil` except the resize, which is `tvF.resize` -> on a uint8
CPU tensor exactly `torch.nn.functional.interpolate(bicubic, antialias=True)` (torchvision
transforms/v2/functional/_geometry.py `resize_image`). torchvision is not installable here (the PyPI wheel
needs CUDA libraries), so the reference is the real `Gemma4ImageProcessorPil` with its resize call routed to
torch's kernel; the unmodified Pillow path is checked too, with its looser (Pillow bicubic) tolerance.
"""

from __future__ import annotations

import io
import struct
import time
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers.image_utils import load_image
from transformers.models.gemma4 import image_processing_pil_gemma4 as hf_pil
from transformers.models.gemma4.processing_gemma4 import Gemma4Processor
from transformers.processing_utils import ProcessorMixin

from mlx_model.image_processor import (
    SUPPORTED_SOFT_TOKENS, ImageLoadError, ImageProcessor, ImageProcessorError, audio_placeholder,
    expand_placeholders, image_placeholder, mm_token_type_ids, open_image, resize_bicubic_antialias,
    to_rgb_array,
)

PIXEL_TOLERANCE = 1e-5


def _torch_resize(image, size, resample=None, **kwargs):
    """What the torchvision backend does in place of Pillow's resize: uint8 CHW in, uint8 CHW out."""
    tensor = torch.from_numpy(np.ascontiguousarray(image))[None]
    out = F.interpolate(tensor, size=list(size), mode="bicubic", align_corners=False, antialias=True)
    return out[0].numpy()


def _reference(images, budget: int, torch_resize: bool = True):
    processor = hf_pil.Gemma4ImageProcessorPil(max_soft_tokens=budget)
    original = hf_pil.resize
    if torch_resize:
        hf_pil.resize = _torch_resize
    try:
        out = processor(images, return_tensors="np")
    finally:
        hf_pil.resize = original
    return out["pixel_values"], out["image_position_ids"], list(out["num_soft_tokens_per_image"])


def _photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth gradients plus noise, like a photo."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / max(1, width), y * 255 / max(1, height), (x + y) % 256], axis=-1)
    return np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)


def _screenshot(height: int, width: int, seed: int = 1) -> Image.Image:
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), 245, dtype=np.uint8)
    for _ in range(60):  # text-like dark bars
        y, x = rng.integers(0, height - 8), rng.integers(0, width - 40)
        image[y:y + 6, x:x + rng.integers(10, 40)] = rng.integers(0, 80)
    return Image.fromarray(image)


def _cases() -> dict[str, Image.Image]:
    rng = np.random.default_rng(2)
    rgba = np.concatenate([_photo(200, 300), rng.integers(0, 256, (200, 300, 1), dtype=np.uint8)], axis=-1)
    palette = Image.fromarray(_photo(120, 90)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 3
    return {
        "photo": Image.fromarray(_photo(480, 640)),
        "tall_screenshot": _screenshot(2400, 390),
        "wide_screenshot": _screenshot(1080, 2560),
        "icon_16": Image.fromarray(rng.integers(0, 256, (16, 16, 4), dtype=np.uint8), "RGBA"),
        "rgba": Image.fromarray(rgba, "RGBA"),
        "grayscale": Image.fromarray(_photo(333, 500)[..., 0], "L"),
        "gray_alpha": Image.fromarray(_photo(100, 130)[..., :2], "LA"),
        "palette_transparent": palette,
        "cmyk": Image.fromarray(_photo(90, 120)).convert("CMYK"),
        "sliver": Image.fromarray(_photo(20, 3000)),  # rounds to one row of 48 px (IP:66 edge case)
        "pixel": Image.fromarray(_photo(1, 1)),
    }


@pytest.mark.parametrize("budget", SUPPORTED_SOFT_TOKENS)
def test_processor_matches_transformers_on_many_images(budget):
    cases = _cases()
    images = list(cases.values())
    ours = ImageProcessor(max_soft_tokens=budget).preprocess(images)
    ref_pixels, ref_positions, ref_counts = _reference(images, budget)
    assert ours.num_soft_tokens == ref_counts
    np.testing.assert_array_equal(ours.position_ids, ref_positions)
    diff = np.abs(ours.pixel_values - ref_pixels).max()
    assert ours.pixel_values.dtype == np.float32 and diff <= PIXEL_TOLERANCE, diff
    for name, image, count in zip(cases, images, ours.num_soft_tokens):  # the count helper agrees
        processor = ImageProcessor(max_soft_tokens=budget)
        assert processor.num_soft_tokens(image.height, image.width) == count, name


def test_pillow_backend_agrees_on_sizes_and_nearly_on_pixels():
    """The unmodified Pillow backend: same sizes and positions; Pillow's bicubic rounds differently from
    torch's integer kernel (up to ~11/255 on noisy downscales), so only the mean difference is bounded."""
    images = list(_cases().values())
    ours = ImageProcessor().preprocess(images)
    pil_pixels, pil_positions, pil_counts = _reference(images, 280, torch_resize=False)
    assert pil_counts == ours.num_soft_tokens
    np.testing.assert_array_equal(pil_positions, ours.position_ids)
    pil_diff = np.abs(pil_pixels - ours.pixel_values)
    print(f"vs Pillow path max {pil_diff.max() * 255:.0f}/255, mean {pil_diff.mean() * 255:.4f}/255")
    assert pil_diff.mean() <= 0.5 / 255


def test_large_photo_at_every_budget():
    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (4000, 6000, 3), dtype=np.uint8))
    for budget in SUPPORTED_SOFT_TOKENS:
        ours = ImageProcessor(max_soft_tokens=budget).preprocess(image)
        ref_pixels, ref_positions, ref_counts = _reference([image], budget)
        assert ours.num_soft_tokens == ref_counts and ref_counts[0] <= budget
        np.testing.assert_array_equal(ours.position_ids, ref_positions)
        assert np.abs(ours.pixel_values - ref_pixels).max() <= PIXEL_TOLERANCE


def test_exif_rotated_jpeg_is_turned_upright(tmp_path):
    pixels = _photo(240, 320)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    Image.fromarray(pixels).save(path, exif=exif.tobytes(), quality=95)
    image = open_image(path)
    assert image.size == (240, 320)  # width and height swapped
    ours = ImageProcessor().preprocess(image)
    ref_pixels, ref_positions, ref_counts = _reference([load_image(str(path))], 280)
    assert ours.num_soft_tokens == ref_counts
    np.testing.assert_array_equal(ours.position_ids, ref_positions)
    assert np.abs(ours.pixel_values - ref_pixels).max() <= PIXEL_TOLERANCE


def test_resize_is_bit_exact_with_torch_on_random_shapes():
    rng = np.random.default_rng(4)
    for _ in range(12):
        h, w = rng.integers(1, 700, size=2)
        th, tw = rng.integers(1, 900, size=2)
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        expected = _torch_resize(image.transpose(2, 0, 1), (th, tw)).transpose(1, 2, 0)
        np.testing.assert_array_equal(resize_bicubic_antialias(image, th, tw), expected)


def test_sixteen_bit_images_keep_their_tones():
    values = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    rgb = to_rgb_array(Image.fromarray(values))
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[..., 0], np.rint(values / 257).astype(np.uint8))


def test_numpy_inputs_follow_the_torchvision_backend():
    rng = np.random.default_rng(5)
    rgba = rng.integers(0, 256, (5, 7, 4), dtype=np.uint8)
    # TorchvisionBackend.convert_to_rgb: float compositing over white, then to_dtype(uint8, scale=True)
    t = torch.from_numpy(rgba).float() * (1 / 255)
    expected = (t[..., :3] * t[..., 3:] + (1 - t[..., 3:])).mul(255.999).to(torch.uint8).numpy()
    np.testing.assert_array_equal(to_rgb_array(rgba), expected)
    gray = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    np.testing.assert_array_equal(to_rgb_array(gray), np.repeat(gray[..., None], 3, axis=-1))


def test_unsupported_budget_is_refused():
    with pytest.raises(ImageProcessorError, match="max_soft_tokens"):
        ImageProcessor(max_soft_tokens=100)
    assert ImageProcessor.from_dict({"image_processor": {"max_soft_tokens": 560}}).max_soft_tokens == 560


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with a tiny (invalid) image body."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def _bad_files(tmp_path) -> dict[str, tuple[object, str]]:
    good = io.BytesIO()
    Image.fromarray(_photo(64, 64)).save(good, format="PNG")
    files = {
        "empty.png": (b"", "empty"),
        "truncated.png": (good.getvalue()[: len(good.getvalue()) // 2], "truncated or corrupt"),
        "document.png": (b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n", "not an image"),
        "bomb.png": (_png_header_only(40_000, 40_000), "megapixel limit"),
    }
    out = {}
    for name, (data, reason) in files.items():
        (tmp_path / name).write_bytes(data)
        out[name] = (tmp_path / name, reason)
    out["missing.png"] = (tmp_path / "missing.png", "does not exist")
    return out


def test_bad_images_raise_image_load_error_quickly(tmp_path):
    for name, (path, reason) in _bad_files(tmp_path).items():
        started = time.monotonic()
        with pytest.raises(ImageLoadError, match=reason) as info:
            ImageProcessor().preprocess(path)
        assert name in str(info.value)  # the message names the file
        assert time.monotonic() - started < 1.0, name
    with pytest.raises(ImageLoadError, match="empty"):
        open_image(b"", name="pasted.png")


def test_prompt_expansion_matches_transformers():
    image_proc = SimpleNamespace(boi_token="<|image>", image_token="<|image|>", eoi_token="<image|>")
    for count in (0, 1, 63, 280):
        expected = Gemma4Processor.replace_image_token(image_proc, {"num_soft_tokens_per_image": [count]}, 0)
        assert image_placeholder(count) == expected
    assert audio_placeholder(3) == "<|audio>" + "<|audio|>" * 3 + "<audio|>"

    text = "<|turn>user\nA <|image|> and <|audio|> then <|image|> and <|video|>.<turn|>"
    images, audios, videos = [image_placeholder(2), image_placeholder(3)], [audio_placeholder(4)], ["V"]
    fake = SimpleNamespace(all_special_multimodal_tokens=["<|image|>", "<|video|>", "<|audio|>"],
                           image_token="<|image|>", video_token="<|video|>", audio_token="<|audio|>")
    expected, _ = ProcessorMixin.get_text_with_replacements(fake, [text], images, videos, audios)
    assert expand_placeholders(text, images=images, videos=videos, audios=audios) == expected[0]
    assert expand_placeholders(text) == text
    with pytest.raises(ImageProcessorError, match="2 image placeholder"):
        expand_placeholders(text, images=[image_placeholder(1)])


def test_mm_token_type_ids_match_transformers():
    ids = [2, 255999, 258880, 258880, 258882, 10, 258884, 256000, 258881, 258883, 1]
    fake = SimpleNamespace(image_token_ids=[258880], video_token_ids=[258884], audio_token_ids=[258881])
    expected = ProcessorMixin.create_mm_token_type_ids(fake, [ids])[0]
    assert mm_token_type_ids(ids).tolist() == expected == [0, 0, 1, 1, 0, 0, 2, 0, 3, 0, 0]
