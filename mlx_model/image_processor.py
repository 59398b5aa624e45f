"""Gemma 4 image preprocessing, safe image loading and multimodal prompt expansion (numpy + Pillow).

Matches transformers 5.23 `Gemma4ImageProcessor`: the torchvision backend, which `AutoProcessor` picks for
a hub checkpoint whenever torchvision is installed (always, where `Gemma4VideoProcessor` loads: it needs
torchvision). That backend resizes uint8 images with torch's integer bicubic-antialias kernel, which
`resize_bicubic_antialias` reproduces bit for bit; Pillow's bicubic (`Gemma4ImageProcessorPil`) differs
from it by a few levels on some pixels. Steps: RGB (alpha over white) -> aspect-preserving resize to
multiples of 48 -> x/255 -> 16x16 patches (py, px, c) -> pad to max_soft_tokens*9 patches at (-1, -1).
IP = transformers/models/gemma4/image_processing_gemma4.py, PP = processing_gemma4.py.
"""

from __future__ import annotations

import errno
import io
import math
import re
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, NamedTuple, Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .file_errors import error_detail, is_access_error, unreadable_reason

SUPPORTED_SOFT_TOKENS = (70, 140, 280, 560, 1120)
# Pillow's own decompression-bomb threshold (~89.5 MP); larger images are refused before decoding.
MAX_IMAGE_PIXELS = 89_478_485
MAX_IMAGE_SIDE = 65_500

BOI_TOKEN, IMAGE_TOKEN, EOI_TOKEN = "<|image>", "<|image|>", "<image|>"
BOA_TOKEN, AUDIO_TOKEN, EOA_TOKEN = "<|audio>", "<|audio|>", "<audio|>"
VIDEO_TOKEN = "<|video|>"
IMAGE_TOKEN_ID, VIDEO_TOKEN_ID, AUDIO_TOKEN_ID = 258_880, 258_884, 258_881

ImageSource = Union[str, Path, bytes, bytearray, Image.Image, np.ndarray]


class ImageLoadError(ValueError):
    """An image file cannot be used; the message names the file and says what to do."""


class ImageProcessorError(ValueError):
    """Preprocessing settings are invalid (e.g. an unsupported soft-token budget)."""


# ----------------------------------------------------------------------------------------------------
# Loading


def open_image(source: Union[str, Path, bytes, bytearray], *, name: Optional[str] = None,
               max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode an image file (path or bytes) fully, with its EXIF orientation applied.

    Refuses, with `ImageLoadError`, empty files, files that are not images (a PDF renamed .png), truncated or
    corrupt data, and images over `max_pixels` (checked from the header, before any pixel is decoded).
    Animated images give their first frame. The returned image keeps its mode (alpha is handled later).
    """
    if isinstance(source, (bytes, bytearray)):
        label = name or "<image bytes>"
        data: Union[io.BytesIO, Path] = io.BytesIO(bytes(source))
        size = len(source)
    else:
        path = Path(source)
        label = name or str(path)
        try:
            size = path.stat().st_size
        except FileNotFoundError as exc:
            raise ImageLoadError(f"Cannot open image '{label}': the file does not exist. Check the path."
                                 ) from exc
        except OSError as exc:
            raise ImageLoadError(f"{label} {unreadable_reason(exc)}") from exc
        if not path.is_file():
            raise ImageLoadError(f"{label} {unreadable_reason(IsADirectoryError(errno.EISDIR, 'folder'))}")
        data = path
    if size == 0:
        raise ImageLoadError(
            f"Cannot open image '{label}': the file is empty (0 bytes). Attach the image again."
        )
    try:
        image = Image.open(data)
        width, height = image.size
        if width <= 0 or height <= 0:
            raise ImageLoadError(f"Cannot open image '{label}': it has no pixels ({width}x{height}).")
        if width * height > max_pixels or max(width, height) > MAX_IMAGE_SIDE:
            raise ImageLoadError(
                f"Cannot open image '{label}': {width}x{height} pixels is larger than the "
                f"{max_pixels / 1e6:.0f}-megapixel limit. Scale it down (or crop it) and attach it again."
            )
        image.load()
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(
            f"Cannot open image '{label}': it is larger than the {max_pixels / 1e6:.0f}-megapixel limit "
            f"({exc}). Scale it down (or crop it) and attach it again."
        ) from exc
    except UnidentifiedImageError as exc:
        raise ImageLoadError(
            f"Cannot open image '{label}': it is not an image format this app can read "
            f"(PNG, JPEG, GIF, WebP, BMP, TIFF). If it is a PDF or another document, attach it as a "
            f"document instead."
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        if is_access_error(exc):
            raise ImageLoadError(f"{label} {unreadable_reason(exc)}") from exc
        raise ImageLoadError(
            f"Cannot open image '{label}': the file is truncated or corrupt ({error_detail(exc)}). "
            f"Re-export or re-download it and attach it again."
        ) from exc
    try:
        return ImageOps.exif_transpose(image)
    except (SyntaxError, ValueError, KeyError, TypeError, OSError, struct.error) as exc:
        # a broken orientation tag must not reject a readable picture: keep it as stored, and say so
        warnings.warn(f"Image '{label}': its EXIF orientation could not be read ({exc}); shown as stored.")
        return image


def to_rgb_array(image: Union[Image.Image, np.ndarray]) -> np.ndarray:
    """An image as HxWx3 uint8 RGB, transparency composited over white.

    Follows transformers' `convert_to_rgb` (image_transforms.py:759) for Pillow images: alpha bands and
    palette/`transparency` info are composited on white, every other mode goes through `convert("RGB")`.
    Deliberate difference: 16/32-bit integer images are scaled to 8 bits (x/257); Pillow's conversion
    used by transformers clips them at 255, which turns most 16-bit images white.
    """
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I") and "A" not in image.getbands():
        values = np.asarray(image).astype(np.int64)
        if values.max(initial=0) > 255:
            values = np.rint(np.clip(values, 0, 65535) / 257.0)
        gray = np.clip(values, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    """HxW, HxWx1, HxWx3 or HxWx4 uint8 arrays to HxWx3, as the torchvision backend converts arrays
    (image_processing_backends.py:156): gray repeated, alpha composited over white in float32 and
    converted back with `to_dtype(uint8, scale=True)` (x * 255.999, truncated)."""
    if array.dtype != np.uint8:
        raise ImageProcessorError(f"image arrays must be uint8 HxWxC, got dtype {array.dtype}")
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise ImageProcessorError(f"image arrays must be HxW or HxWxC with C in (1, 3, 4), got {array.shape}")
    if array.shape[-1] == 1:
        return np.repeat(array, 3, axis=-1)
    if array.shape[-1] == 4:
        values = array.astype(np.float32) * np.float32(1 / 255)
        alpha = values[..., 3:]
        rgb = values[..., :3] * alpha + (np.float32(1) - alpha)
        return (rgb * np.float32(255.999)).astype(np.uint8)
    return np.ascontiguousarray(array)


# ----------------------------------------------------------------------------------------------------
# Resize: torch's uint8 antialiased bicubic (aten/src/ATen/native/cpu/UpSampleKernel.cpp), integer weights


def _cubic_filter(x: np.ndarray) -> np.ndarray:
    """Keys cubic with a = -0.5 (`HelperInterpCubic::aa_filter`), evaluated in float64 as torch does."""
    a = -0.5
    x = np.abs(x)
    inner = (((a + 2) * x - (a + 3)) * x) * x + 1
    outer = (((a * x - 5 * a) * x + 8 * a) * x) - 4 * a
    return np.where(x < 1.0, inner, np.where(x < 2.0, outer, 0.0))


def _int16_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Per output index: first source index, int16 weights [out, taps], and their fixed-point precision.

    `_compute_indices_min_size_weights_aa` + `_compute_index_ranges_int16_weights` (align_corners=False,
    scale = in/out, antialias support 2*scale when shrinking).
    """
    scale = in_size / out_size
    support = 2.0 * scale if scale >= 1.0 else 2.0
    taps = int(math.ceil(support)) * 2 + 1
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    center = scale * (np.arange(out_size, dtype=np.float64) + 0.5)
    xmin = np.maximum((center - support + 0.5).astype(np.int64), 0)  # C++ truncation, then max 0
    xsize = np.minimum((center + support + 0.5).astype(np.int64), in_size) - xmin
    xsize = np.clip(xsize, 0, taps)
    j = np.arange(taps, dtype=np.int64)
    valid = j[None, :] < xsize[:, None]
    offsets = (j[None, :] + xmin[:, None]).astype(np.float64) - center[:, None] + 0.5
    weights = np.where(valid, _cubic_filter(offsets * invscale), 0.0)
    total = np.zeros(out_size, dtype=np.float64)
    for k in range(taps):  # sequential sum, the order torch adds in
        total += weights[:, k]
    nonzero = total != 0.0
    weights[nonzero] /= total[nonzero, None]
    weight_max = float(weights[nonzero].max(initial=0.0))
    precision = 0
    while precision < 22 and int(0.5 + weight_max * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    scaled = weights * float(1 << precision)
    fixed = np.where(scaled < 0, np.trunc(scaled - 0.5), np.trunc(scaled + 0.5)).astype(np.int64)
    return xmin, fixed, precision


def _resample_rows(source: np.ndarray, out_size: int) -> np.ndarray:
    """One separable pass along axis 0 of a 2-D uint8 array: int32 sums of int16 weights, `>> precision`,
    clamped to uint8 (`basic_loop_aa_vertical<uint8_t>`). Column blocks keep the accumulator in cache."""
    in_size, width = source.shape
    xmin, weights, precision = _int16_weights(in_size, out_size)
    taps = [(np.minimum(xmin + k, in_size - 1), weights[:, k, None].astype(np.int32))
            for k in range(weights.shape[1]) if weights[:, k].any()]
    out = np.empty((out_size, width), dtype=np.uint8)
    block = max(256, (1 << 20) // out_size)
    for start in range(0, width, block):
        part = source[:, start:start + block]
        acc = np.full((out_size, part.shape[1]), 1 << (precision - 1), dtype=np.int32)
        for index, weight in taps:
            acc += part[index] * weight
        np.right_shift(acc, precision, out=acc)
        np.clip(acc, 0, 255, out=acc)
        out[:, start:start + block] = acc
    return out


def resize_bicubic_antialias(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize HxWxC uint8 to (height, width) exactly like `torchvision.transforms.v2.functional.resize`
    (bicubic, antialias=True) on a uint8 CPU tensor: columns first, then rows, uint8 in between
    (UpSampleKernel.cpp `separable_upsample_generic_Nd_kernel_impl`)."""
    in_height, in_width, channels = image.shape
    if in_width != width:
        columns = np.ascontiguousarray(image.transpose(1, 0, 2)).reshape(in_width, in_height * channels)
        columns = _resample_rows(columns, width)
        image = np.ascontiguousarray(columns.reshape(width, in_height, channels).transpose(1, 0, 2))
    if in_height != height:
        rows = _resample_rows(image.reshape(in_height, width * channels), height)
        image = rows.reshape(height, width, channels)
    return image


# ----------------------------------------------------------------------------------------------------
# Sizes, patches


def aspect_ratio_preserving_size(height: int, width: int, patch_size: int, max_patches: int,
                                 pooling_kernel_size: int) -> tuple[int, int]:
    """Largest (H, W), multiples of pooling_kernel_size*patch_size, with at most `max_patches` patches.

    IP:33 `get_aspect_ratio_preserving_size`; small images are scaled up to fill the budget."""
    total_px = height * width
    target_px = max_patches * (patch_size**2)
    factor = math.sqrt(target_px / total_px)
    side_mult = pooling_kernel_size * patch_size
    target_height = int(math.floor(factor * height / side_mult)) * side_mult
    target_width = int(math.floor(factor * width / side_mult)) * side_mult
    if target_height == 0 and target_width == 0:
        raise ImageProcessorError(f"cannot resize a {width}x{height} image to a non-empty patch grid")
    max_side_length = (max_patches // pooling_kernel_size**2) * side_mult
    if target_height == 0:  # IP:66 extremely wide: one row of kernels
        target_height = side_mult
        target_width = min(int(math.floor(width / height)) * side_mult, max_side_length)
    elif target_width == 0:
        target_width = side_mult
        target_height = min(int(math.floor(height / width)) * side_mult, max_side_length)
    if target_height * target_width > target_px:
        raise ImageProcessorError(
            f"resizing {width}x{height} to {target_width}x{target_height} exceeds {max_patches} patches"
        )
    return target_height, target_width


def patchify(image: np.ndarray, patch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """HxWx3 float image -> patches [N, p*p*3] in (py, px, c) order and positions [N, 2] as (x=col, y=row)."""
    height, width, channels = image.shape
    rows, cols = height // patch_size, width // patch_size
    patches = image.reshape(rows, patch_size, cols, patch_size, channels).transpose(0, 2, 1, 3, 4)
    patches = patches.reshape(rows * cols, patch_size * patch_size * channels)
    grid_x, grid_y = np.meshgrid(np.arange(cols), np.arange(rows), indexing="xy")
    positions = np.stack([grid_x, grid_y], axis=-1).reshape(rows * cols, 2)
    return patches, positions


class ImageBatch(NamedTuple):
    """`pixel_values` [B, max_patches, 3*p*p] float32 in [0, 1], `position_ids` [B, max_patches, 2] int32 with
    (-1, -1) for padding, `num_soft_tokens` per image (what the tower returns and the prompt must hold)."""

    pixel_values: np.ndarray
    position_ids: np.ndarray
    num_soft_tokens: list[int]


@dataclass
class ImageProcessor:
    """transformers' `Gemma4ImageProcessor` (torchvision backend) without torch.

    `model_patches` gives Gemma 4 12B's `Gemma4UnifiedImageProcessor` instead: each 3x3 group of 16-pixel
    patches merged into one 48-pixel patch (UIP:139 `patches_merge`; the same values as cutting the image
    into 48-pixel patches directly), positions on the 48-pixel grid, padded to `max_soft_tokens` rows.
    UIP = transformers/models/gemma4_unified/image_processing_gemma4_unified.py.
    """

    max_soft_tokens: int = 280
    patch_size: int = 16
    pooling_kernel_size: int = 3
    model_patches: bool = False

    def __post_init__(self):
        _check_budget(self.max_soft_tokens)

    @classmethod
    def from_dict(cls, params: dict, model_patches: bool = False) -> "ImageProcessor":
        """From a `preprocessor_config.json` / `processor_config.json["image_processor"]` dict."""
        params = params.get("image_processor", params)
        keys = ("max_soft_tokens", "patch_size", "pooling_kernel_size")
        return cls(**{k: params[k] for k in keys if params.get(k) is not None}, model_patches=model_patches)

    @property
    def patch_width(self) -> int:
        """Values per row of `pixel_values`: 16*16*3 = 768, or 48*48*3 = 6912 with `model_patches`."""
        side = self.patch_size * (self.pooling_kernel_size if self.model_patches else 1)
        return side * side * 3

    def rows(self, max_soft_tokens: int) -> int:
        """Rows of `pixel_values` per image: a patch each (9 per soft token), or a soft token each."""
        return max_soft_tokens * (1 if self.model_patches else self.pooling_kernel_size**2)

    def target_size(self, height: int, width: int, max_soft_tokens: Optional[int] = None) -> tuple[int, int]:
        """(H, W) an image of this size is resized to."""
        budget = max_soft_tokens or self.max_soft_tokens
        _check_budget(budget)
        max_patches = budget * self.pooling_kernel_size**2
        return aspect_ratio_preserving_size(
            height, width, self.patch_size, max_patches, self.pooling_kernel_size
        )

    def num_soft_tokens(self, height: int, width: int, max_soft_tokens: Optional[int] = None) -> int:
        """Soft tokens an image of this size becomes (PP:250 `_get_num_multimodal_tokens`)."""
        target_h, target_w = self.target_size(height, width, max_soft_tokens)
        return (target_h // self.patch_size) * (target_w // self.patch_size) // self.pooling_kernel_size**2

    def patch_rows(self, scaled: np.ndarray, max_soft_tokens: int,
                   out: Optional[tuple[np.ndarray, np.ndarray]] = None) -> tuple[np.ndarray, np.ndarray, int]:
        """A resized, rescaled HxWx3 float32 image -> (pixel_values, position_ids, soft tokens), padded.

        `out` may give the two arrays to fill (rows of a batch), which saves a copy of large batches.
        """
        merge = self.pooling_kernel_size if self.model_patches else 1
        patches, positions = patchify(scaled, self.patch_size * merge)
        rows = self.rows(max_soft_tokens)
        if out is None:
            out = (np.empty((rows, patches.shape[1]), np.float32), np.empty((rows, 2), np.int32))
        pixel_values, position_ids = out
        pixel_values[: len(patches)] = patches
        pixel_values[len(patches):] = 0.0  # IP:111 padding patches are zeros at position (-1, -1)
        position_ids[: len(positions)] = positions
        position_ids[len(positions):] = -1
        count = len(patches) if self.model_patches else len(patches) // self.pooling_kernel_size**2
        return pixel_values, position_ids, count

    def preprocess_one(
        self, image: ImageSource, max_soft_tokens: Optional[int] = None,
        out: Optional[tuple[np.ndarray, np.ndarray]] = None,
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """One image -> (patches [rows, patch_width] float32, positions [rows, 2] int32, n soft tokens)."""
        budget = max_soft_tokens or self.max_soft_tokens
        _check_budget(budget)
        if isinstance(image, (str, Path, bytes, bytearray)):
            image = open_image(image)
        rgb = to_rgb_array(image)
        target_h, target_w = self.target_size(rgb.shape[0], rgb.shape[1], budget)
        rgb = resize_bicubic_antialias(rgb, target_h, target_w)
        # torchvision backend: uint8 tensor * (1/255) in float32 (image_processing_backends.py `rescale`)
        scaled = rgb.astype(np.float32) * np.float32(1 / 255)
        return self.patch_rows(scaled, budget, out)

    def preprocess(self, images: Union[ImageSource, Sequence[ImageSource]],
                   max_soft_tokens: Optional[int] = None) -> ImageBatch:
        """Images (Pillow images, uint8 arrays, paths or bytes) -> `ImageBatch` (unpacks as a 3-tuple)."""
        if isinstance(images, (str, Path, bytes, bytearray, Image.Image, np.ndarray)):
            images = [images]
        images = list(images)
        if not images:
            raise ImageProcessorError("no images to preprocess")
        budget = max_soft_tokens or self.max_soft_tokens
        _check_budget(budget)
        pixel_values = np.empty((len(images), self.rows(budget), self.patch_width), dtype=np.float32)
        position_ids = np.empty((len(images), self.rows(budget), 2), dtype=np.int32)
        counts = [self.preprocess_one(image, budget, out=(pixel_values[i], position_ids[i]))[2]
                  for i, image in enumerate(images)]
        return ImageBatch(pixel_values=pixel_values, position_ids=position_ids, num_soft_tokens=counts)

    __call__ = preprocess


def _check_budget(max_soft_tokens: int) -> None:
    if max_soft_tokens not in SUPPORTED_SOFT_TOKENS:
        raise ImageProcessorError(
            f"max_soft_tokens must be one of {SUPPORTED_SOFT_TOKENS} (the budgets Gemma 4 was trained with), "
            f"got {max_soft_tokens}"
        )


# ----------------------------------------------------------------------------------------------------
# Prompt expansion (PP:197-230; processing_utils.py `get_text_with_replacements`, `create_mm_token_type_ids`)


def image_placeholder(num_soft_tokens: int) -> str:
    """What one `<|image|>` in a prompt becomes: `<|image>` + n * `<|image|>` + `<image|>` (PP:197)."""
    return f"{BOI_TOKEN}{IMAGE_TOKEN * num_soft_tokens}{EOI_TOKEN}"


def audio_placeholder(num_soft_tokens: int) -> str:
    """What one `<|audio|>` in a prompt becomes: `<|audio>` + n * `<|audio|>` + `<audio|>` (PP:222)."""
    return f"{BOA_TOKEN}{AUDIO_TOKEN * num_soft_tokens}{EOA_TOKEN}"


_PLACEHOLDER_RE = {
    "image": re.escape(IMAGE_TOKEN), "video": re.escape(VIDEO_TOKEN), "audio": re.escape(AUDIO_TOKEN),
}


def expand_placeholders(text: str, images: Iterable[str] = (), videos: Iterable[str] = (),
                        audios: Iterable[str] = ()) -> str:
    """Replace the single `<|image|>` / `<|video|>` / `<|audio|>` placeholders of a prompt, in order, with the
    given expansions (from `image_placeholder`, `video.video_placeholder`, `audio_placeholder`).

    A modality with no expansions is left untouched, as transformers does; a count mismatch raises.
    """
    replacements = {"image": list(images), "video": list(videos), "audio": list(audios)}
    active = [k for k, v in replacements.items() if v]
    if not active:
        return text
    pattern = re.compile("|".join(f"(?P<{k}>{_PLACEHOLDER_RE[k]})" for k in active))
    counts = {k: 0 for k in active}
    for match in pattern.finditer(text):
        counts[match.lastgroup] += 1
    for kind in active:
        if counts[kind] != len(replacements[kind]):
            raise ImageProcessorError(
                f"the prompt has {counts[kind]} {kind} placeholder(s) but {len(replacements[kind])} {kind} "
                f"attachment(s) were given; put one placeholder per attachment"
            )
    iters = {k: iter(v) for k, v in replacements.items()}
    return pattern.sub(lambda m: next(iters[m.lastgroup]), text)


def mm_token_type_ids(
    input_ids: Union[Sequence[int], np.ndarray], image_token_id: int = IMAGE_TOKEN_ID,
    video_token_id: int = VIDEO_TOKEN_ID, audio_token_id: int = AUDIO_TOKEN_ID,
) -> np.ndarray:
    """Per-token modality: 0 text (boi/eoi/boa/eoa included), 1 image, 2 video, 3 audio soft-token slots."""
    ids = np.asarray(input_ids)
    types = np.zeros(ids.shape, dtype=np.int32)
    types[ids == image_token_id] = 1
    types[ids == video_token_id] = 2
    types[ids == audio_token_id] = 3
    return types
