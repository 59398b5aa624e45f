"""Gemma 4 12B's processor against transformers' Gemma4UnifiedProcessor: image, video and audio inputs,
soft-token counts and prompt token ids.

transformers' unified image and video processors need torchvision, which this environment lacks: their
modules are imported with `tvF.resize` standing in as torch's own uint8 bicubic-antialias kernel (the one
torchvision's resize calls on CPU), and their `_preprocess` runs as written, patches_merge included.
"""

from __future__ import annotations

import importlib
import sys
import types
from enum import Enum
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoTokenizer
from transformers.image_processing_backends import TorchvisionBackend
from transformers.models.gemma4_unified.feature_extraction_gemma4_unified import (
    Gemma4UnifiedAudioFeatureExtractor)
from transformers.models.gemma4_unified.processing_gemma4_unified import Gemma4UnifiedProcessor
from transformers.processing_utils import ProcessorMixin

from mlx_model.audio_features import WaveformFrameExtractor
from mlx_model.config import ModelConfig
from mlx_model.image_processor import ImageProcessor, mm_token_type_ids, to_rgb_array
from mlx_model.processor import Processor
from mlx_model.tokenizer import load_tokenizer
from mlx_model.video import load_video
from tests.assets import gemma4_vocab_dir
from tests.test_video import _make_clip, _reference
from tests.unified_reference import AUDIO, TEXT, VISION

TOLERANCE = 1e-6
TOKENS = SimpleNamespace(boi_token="<|image>", eoi_token="<image|>", image_token="<|image|>",
                         video_token="<|video|>", boa_token="<|audio>", eoa_token="<audio|>",
                         audio_token="<|audio|>")


class _Interpolation(Enum):
    BICUBIC = "bicubic"


def _resize(image, size, interpolation=None, antialias=True):
    """torchvision's resize of a uint8 tensor on CPU: torch's antialiased bicubic kernel."""
    batched = image if image.ndim == 4 else image[None]
    out = F.interpolate(batched, size=list(size), mode="bicubic", align_corners=False, antialias=antialias)
    return out if image.ndim == 4 else out[0]


def _normalize(image, mean, std, inplace=False):
    """torchvision's tensor normalize: (x - mean) / std per channel."""
    mean = torch.as_tensor(mean, dtype=image.dtype).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=image.dtype).view(-1, 1, 1)
    return (image.sub_(mean) if inplace else image.sub(mean)).div_(std)


def _hf_module(name: str):
    """A transformers module that imports torchvision's functional API, with the stand-in above."""
    functional = types.ModuleType("torchvision.transforms.v2.functional")
    functional.resize, functional.normalize = _resize, _normalize
    functional.InterpolationMode = _Interpolation
    stubs = {"torchvision": types.ModuleType("torchvision"),
             "torchvision.transforms": types.ModuleType("torchvision.transforms"),
             "torchvision.transforms.v2": types.ModuleType("torchvision.transforms.v2"),
             "torchvision.transforms.v2.functional": functional}
    with mock.patch.dict(sys.modules, stubs):
        sys.modules.pop(name, None)
        return importlib.import_module(name)


def _backend_self(processor_class):
    """What `_preprocess` needs of `self`: the class's own resize and the torchvision backend's rescale."""
    fake = SimpleNamespace()
    fake.aspect_ratio_preserving_resize = (
        lambda **kw: processor_class.aspect_ratio_preserving_resize(fake, **kw))
    fake.rescale_and_normalize = lambda *args: TorchvisionBackend.rescale_and_normalize(fake, *args)
    fake._fuse_mean_std_and_rescale_factor = (
        lambda **kw: TorchvisionBackend._fuse_mean_std_and_rescale_factor.__wrapped__(fake, **kw))
    fake.rescale = lambda image, scale, **kw: TorchvisionBackend.rescale(fake, image, scale)
    fake.normalize = lambda image, mean, std, inplace=False, **kw: _normalize(image, mean, std, inplace)
    return fake


@pytest.fixture(scope="module")
def hf_images():
    module = _hf_module("transformers.models.gemma4_unified.image_processing_gemma4_unified")
    cls = module.Gemma4UnifiedImageProcessor

    def run(images: list[np.ndarray], budget: int):
        tensors = [torch.from_numpy(np.ascontiguousarray(to_rgb_array(im))).permute(2, 0, 1).contiguous()
                   for im in images]
        out = cls._preprocess(_backend_self(cls), tensors, do_resize=True, resample=_Interpolation.BICUBIC,
                              do_rescale=True, rescale_factor=1 / 255, do_normalize=cls.do_normalize,
                              image_mean=cls.image_mean, image_std=cls.image_std, return_tensors=None,
                              patch_size=16, max_soft_tokens=budget, pooling_kernel_size=3)
        return (out["pixel_values"].numpy(), out["image_position_ids"].numpy(),
                out["num_soft_tokens_per_image"])

    return run


@pytest.fixture(scope="module")
def hf_video():
    module = _hf_module("transformers.models.gemma4_unified.video_processing_gemma4_unified")
    cls = module.Gemma4UnifiedVideoProcessor

    def run(frames: np.ndarray, budget: int = 70):
        video = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()
        out = cls._preprocess(_backend_self(cls), [video], do_resize=True, resample=_Interpolation.BICUBIC,
                              do_rescale=True, rescale_factor=1 / 255, do_normalize=cls.do_normalize,
                              image_mean=cls.image_mean, image_std=cls.image_std, return_tensors=None,
                              patch_size=16, max_soft_tokens=budget, pooling_kernel_size=3)
        return (out["pixel_values_videos"].numpy(), out["video_position_ids"].numpy(),
                out["num_soft_tokens_per_video"][0])

    return run


def _pictures() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    sizes = [(90, 160), (200, 120), (48, 48), (13, 17), (500, 37), (31, 900), (333, 333)]
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for size in sizes]


@pytest.mark.parametrize("budget", [70, 280, 1120])
def test_image_patches_positions_and_counts_match_transformers(hf_images, budget):
    ours = ImageProcessor(model_patches=True)
    for picture in _pictures():
        pixels, positions, counts = hf_images([picture], budget)
        values, where, count = ours.preprocess_one(picture, budget)
        assert values.shape == pixels.shape[1:] == (budget, 48 * 48 * 3)
        assert count == counts[0] == ours.num_soft_tokens(*picture.shape[:2], budget)
        np.testing.assert_array_equal(where, positions[0])
        assert np.abs(values - pixels[0]).max() <= TOLERANCE
    batch = ours.preprocess(_pictures()[:3], budget)  # a batch is the single images stacked
    pixels, positions, counts = hf_images(_pictures()[:3], budget)
    assert batch.num_soft_tokens == list(counts) and np.abs(batch.pixel_values - pixels).max() <= TOLERANCE


def test_video_frames_and_prompt_match_transformers(hf_video, tmp_path):
    path = tmp_path / "clip.mp4"
    _make_clip(path, "libx264", "mp4", 60, 12, (96, 64), "yuv420p", 5, None)
    frames, metadata = _reference(path, 8)
    pixels, positions, tokens = hf_video(frames)
    ours = load_video(path, num_frames=8, processor=ImageProcessor(max_soft_tokens=70, model_patches=True))
    assert ours.num_soft_tokens_per_frame == tokens
    np.testing.assert_array_equal(ours.position_ids, positions)
    assert np.abs(ours.pixel_values - pixels).max() <= TOLERANCE
    expected = Gemma4UnifiedProcessor.replace_video_token(
        TOKENS, {"num_soft_tokens_per_video": [tokens], "video_metadata": [metadata]}, 0)
    assert ours.prompt == expected


def test_audio_frames_masks_and_counts_match_transformers():
    reference, ours = Gemma4UnifiedAudioFeatureExtractor(), WaveformFrameExtractor()
    rng = np.random.default_rng(3)
    lengths = [1, 639, 640, 641, 16_000, 21_920, 480_000, 480_001]
    clips = [rng.uniform(-1, 1, n).astype(np.float32) for n in lengths]
    for clip in clips:
        expected = reference([clip], return_tensors="np")
        frames, mask = ours([clip])
        np.testing.assert_array_equal(frames, expected["input_features"])
        np.testing.assert_array_equal(mask, expected["input_features_mask"])
        count = Gemma4UnifiedProcessor._compute_audio_num_tokens(
            SimpleNamespace(feature_extractor=reference), clip, 16_000)
        assert ours.num_soft_tokens(len(clip)) == count == int(mask.sum())
        assert (Gemma4UnifiedProcessor.replace_audio_token(TOKENS, {"input_features_mask": mask}, 0)
                == "<|audio>" + "<|audio|>" * count + "<audio|>")
    batch = reference(clips[:4], return_tensors="np")  # a batch pads with zero frames, masked out
    frames, mask = ours(clips[:4])
    np.testing.assert_array_equal(frames, batch["input_features"])
    np.testing.assert_array_equal(mask, batch["input_features_mask"])


def test_prompt_token_ids_match_transformers(hf_images, tmp_path):
    """A rendered prompt with an image, an audio clip and a video: our ids equal transformers' expansion
    tokenized by its own tokenizer, and every soft-token run sits where mm_token_type_ids put it."""
    import soundfile

    config = ModelConfig.from_dict({"model_type": "gemma4_unified", "text_config": TEXT,
                                    "vision_config": VISION, "audio_config": AUDIO})
    processor = Processor(load_tokenizer(gemma4_vocab_dir()), config, video_frames=4)
    picture = _pictures()[0]
    Image.fromarray(picture).save(tmp_path / "wide.png")
    sound = (0.3 * np.sin(2 * np.pi * 440 * np.arange(21_937) / 16_000)).astype(np.float32)
    soundfile.write(tmp_path / "voice.wav", sound, 16_000, subtype="FLOAT")
    _make_clip(tmp_path / "clip.mp4", "libx264", "mp4", 24, 12, (96, 64), "yuv420p", 5, None)
    text = "<bos><|turn>user\nLook <|image|> hear <|audio|> and watch <|video|> now.<turn|>\n<|turn>model\n"
    parts = [("image", tmp_path / "wide.png"), ("audio", tmp_path / "voice.wav"),
             ("video", tmp_path / "clip.mp4")]
    prepared = processor.process_text(text, parts)

    _, _, counts = hf_images([picture], 280)
    features = Gemma4UnifiedAudioFeatureExtractor()([sound], return_tensors="np")
    frames, metadata = _reference(tmp_path / "clip.mp4", 4)
    video_tokens = ImageProcessor(max_soft_tokens=70, model_patches=True).num_soft_tokens(*frames.shape[1:3])
    expansions = (
        [Gemma4UnifiedProcessor.replace_image_token(TOKENS, {"num_soft_tokens_per_image": counts}, 0)],
        [Gemma4UnifiedProcessor.replace_video_token(
            TOKENS, {"num_soft_tokens_per_video": [video_tokens], "video_metadata": [metadata]}, 0)],
        [Gemma4UnifiedProcessor.replace_audio_token(
            TOKENS, {"input_features_mask": features["input_features_mask"]}, 0)],
    )
    fake = SimpleNamespace(all_special_multimodal_tokens=["<|image|>", "<|video|>", "<|audio|>"],
                           image_token="<|image|>", video_token="<|video|>", audio_token="<|audio|>")
    expanded, _ = ProcessorMixin.get_text_with_replacements(fake, [text], *expansions)
    tokenizer = AutoTokenizer.from_pretrained(gemma4_vocab_dir())
    expected_ids = tokenizer(expanded[0], add_special_tokens=False)["input_ids"]
    assert prepared.tokens == expected_ids

    types = mm_token_type_ids(prepared.tokens)
    kinds = {"image": 1, "video": 2, "audio": 3}
    assert [b.kind for b in prepared.media] == ["image", "audio"] + ["video"] * 4
    for block in prepared.media:
        assert set(types[block.start:block.end]) == {kinds[block.kind]}
    assert int((types > 0).sum()) == sum(b.length for b in prepared.media)
    assert prepared.media[0].length == counts[0] and prepared.media[1].length == 35  # ceil(21937 / 640)
    np.testing.assert_array_equal(prepared.media[1].inputs[0], features["input_features"])
