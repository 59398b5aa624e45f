"""The processor that travels with a model: tokenizer, chat format, and images, video and audio as soft tokens.

`Processor.process(messages)` renders the conversation with the model's chat format, turns every
attachment into its inputs for the vision or audio tower, expands each `<|image|>`, `<|video|>` and
`<|audio|>` placeholder into the exact soft-token run transformers' `Gemma4Processor` writes, and says
where each run sits in the token ids. The towers themselves run later, in prefill, and only for the
blocks the conversation cache does not hold yet.
"""

from __future__ import annotations

import collections
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from .config import ModelConfig
from .model import MultimodalInputError

PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
IMAGE_KINDS = ("image", "image_url")
AUDIO_KINDS = ("audio", "input_audio")
MEDIA_CACHE_ENTRIES = 16  # preprocessed attachments kept for the next turns (regenerate, edit, resend)


@dataclass
class MediaBlock:
    """One run of soft tokens in a prompt: an image, a video frame or a 30 s audio clip.

    `inputs` are the tower's arrays for this block alone (batch of one); `key` identifies its content,
    since the placeholder ids are the same for every image and cannot tell two pictures apart.
    """

    kind: str  # "image" | "video" | "audio"
    start: int
    length: int
    key: int
    inputs: tuple[np.ndarray, np.ndarray]

    @property
    def end(self) -> int:
        return self.start + self.length


@dataclass
class ProcessedPrompt:
    """Token ids of a rendered conversation with its media blocks, and notes for the person."""

    tokens: list[int]
    media: list[MediaBlock] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def keys(self) -> list[int]:
        return media_keys(self.tokens, self.media)


def media_keys(tokens: Sequence[int], media: Sequence[MediaBlock]) -> list[int]:
    """The tokens with each block's soft tokens replaced by a value derived from its content.

    Caches match prompts on these, so a new picture of the same size never reuses an old one's KV.
    """
    keys = list(tokens)
    for block in media:
        keys[block.start:block.end] = [block.key] * block.length
    return keys


@dataclass
class _Prepared:
    """An attachment turned into tower inputs: its blocks (kind, inputs, soft tokens) and prompt text."""

    blocks: list[tuple[str, tuple[np.ndarray, np.ndarray], int]]
    text: str
    digest: str
    note: Optional[str] = None


def _content_key(digest: str, index: int) -> int:
    """A negative int32 (never a token id) naming block `index` of content `digest`."""
    value = (int(digest[:15], 16) + index) % (2**31 - 1)
    return -value - 1


def _digest_of(source: Any) -> str:
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        h = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    if isinstance(source, (bytes, bytearray)):
        return hashlib.sha256(source).hexdigest()
    if isinstance(source, np.ndarray):
        return hashlib.sha256(np.ascontiguousarray(source).tobytes() + str(source.shape).encode()).hexdigest()
    if hasattr(source, "tobytes"):  # a Pillow image
        return hashlib.sha256(source.tobytes() + str(getattr(source, "size", "")).encode()).hexdigest()
    raise MultimodalInputError(f"cannot read an attachment of type {type(source).__name__}; give a file path")


def _describe(source: Any) -> str:
    return Path(source).name if isinstance(source, (str, Path)) else "the attachment"


def media_parts(messages: Iterable[Mapping]) -> list[tuple[str, Any]]:
    """(kind, source) of every image, video and audio part, in the order they appear."""
    found = []
    for message in messages:
        content = message.get("content")
        if not isinstance(content, (list, tuple)):
            continue
        for part in content:
            if not isinstance(part, Mapping):
                continue
            kind = part.get("type")
            if kind in IMAGE_KINDS:
                kind = "image"
            elif kind in AUDIO_KINDS:
                kind = "audio"
            elif kind != "video":
                continue
            source = next((part[k] for k in ("path", kind, "url", "image_url", "input_audio") if part.get(k)
                           is not None), None)
            if isinstance(source, Mapping):  # {"url": ...} as the OpenAI format nests it
                source = source.get("url") or source.get("path")
            if isinstance(source, str) and source.startswith("file://"):
                source = source[len("file://"):]
            if source is None:
                raise MultimodalInputError(f"an {kind} part of the conversation names no file; attach it again")
            found.append((kind, source))
    return found


class Processor:
    """Tokenizer + chat format + image, video and audio preprocessing for one model."""

    def __init__(self, tokenizer, config: Optional[ModelConfig] = None, *, processor_config: Optional[dict] = None,
                 video_frames: int = 32, video_audio: bool = True):
        """`tokenizer` renders and encodes text; without a `config` the processor is text-only."""
        from .audio_features import AudioFeatureExtractor, WaveformFrameExtractor
        from .image_processor import ImageProcessor

        self.tokenizer = tokenizer
        self.config = config
        params = processor_config or {}
        self.can_see = config is not None and config.vision_config is not None
        self.can_hear = config is not None and config.audio_config is not None
        # Gemma 4 12B: 48-pixel patches and raw 40 ms audio frames (Gemma4UnifiedProcessor)
        self.unified = config is not None and config.is_unified
        image_params = params.get("image_processor", params)
        vision = (config.vision_config if config is not None else None) or {}
        image_params = {"patch_size": vision.get("patch_size"),
                        "pooling_kernel_size": vision.get("pooling_kernel_size"), **image_params}
        self.image_processor = (ImageProcessor.from_dict(image_params, model_patches=self.unified)
                                if self.can_see else None)
        self.image_token_budget = self.image_processor.max_soft_tokens if self.can_see else 280
        feature_params = params.get("feature_extractor", {})
        extractor = WaveformFrameExtractor if self.unified else AudioFeatureExtractor
        self.audio_extractor = extractor.from_dict(feature_params) if self.can_hear else None
        self.video_frames = video_frames
        self.video_audio = video_audio  # a clip's sound track goes in too when the model can hear
        self._cache: "collections.OrderedDict[tuple, _Prepared]" = collections.OrderedDict()

    # -- the tokenizer's interface, so a Processor can stand where a Tokenizer is expected ---------------

    def apply_chat_template(self, messages, **kwargs) -> str:
        return self.tokenizer.apply_chat_template(messages, **kwargs)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    # -- prompts ------------------------------------------------------------------------------------------

    def process(self, messages: Sequence[Mapping], *, tools: Optional[Sequence[Mapping]] = None,
                enable_thinking: bool = False, add_generation_prompt: bool = True) -> ProcessedPrompt:
        """Render, expand and tokenize a conversation; raises MultimodalInputError for unusable attachments."""
        text = self.tokenizer.apply_chat_template(messages, tools=tools, enable_thinking=enable_thinking,
                                                  add_generation_prompt=add_generation_prompt)
        return self.process_text(text, media_parts(messages))

    def process_text(self, text: str, parts: Sequence[tuple[str, Any]] = ()) -> ProcessedPrompt:
        """Tokenize a rendered prompt whose placeholders stand for `parts` (kind, source), in order."""
        from .image_processor import ImageProcessorError, expand_placeholders

        self._check_abilities(parts)
        prepared = [self._prepare(kind, source) for kind, source in parts]
        expansions: dict[str, list[str]] = {"image": [], "video": [], "audio": []}
        for (kind, _), item in zip(parts, prepared):
            expansions[kind].append(item.text)
        try:
            expanded = expand_placeholders(text, images=expansions["image"], videos=expansions["video"],
                                           audios=expansions["audio"])
        except ImageProcessorError as error:
            raise MultimodalInputError(str(error)) from error
        tokens = self.tokenizer.encode(expanded, add_special_tokens=False)
        if not prepared:
            return ProcessedPrompt(tokens)
        media = self._locate_blocks(tokens, [(b, item.digest) for item in prepared for b in item.blocks])
        return ProcessedPrompt(tokens, media, [item.note for item in prepared if item.note])

    def _check_abilities(self, parts: Sequence[tuple[str, Any]]) -> None:
        kinds = {kind for kind, _ in parts}
        if kinds & {"image", "video"} and not self.can_see:
            raise MultimodalInputError("This model cannot look at images or videos. Load a Gemma 4 model "
                                       "(E2B, E4B, 12B, 26B-A4B or 31B) to ask about pictures.")
        if "audio" in kinds and not self.can_hear:
            raise MultimodalInputError("This model cannot listen to audio. Load Gemma 4 E2B or E4B (or 12B), "
                                       "the models that hear, to ask about recordings.")

    def _locate_blocks(self, tokens: list[int], blocks: list[tuple[tuple, str]]) -> list[MediaBlock]:
        ids = np.asarray(tokens)
        kind_of = {self.config.image_token_id: "image", self.config.video_token_id: "video",
                   self.config.audio_token_id: "audio"}
        runs = []
        in_run = np.isin(ids, list(kind_of))
        i = 0
        while i < len(ids):
            if not in_run[i]:
                i += 1
                continue
            j = i
            while j < len(ids) and ids[j] == ids[i]:
                j += 1
            runs.append((kind_of[int(ids[i])], i, j - i))
            i = j
        pending = {kind: [(b, d) for b, d in blocks if b[0] == kind] for kind in ("image", "video", "audio")}
        counters = {kind: 0 for kind in pending}
        media = []
        for kind, start, length in runs:
            index = counters[kind]
            counters[kind] += 1
            if index >= len(pending[kind]):
                raise MultimodalInputError(f"the conversation text contains {kind} placeholder tokens with no "
                                           f"attachment behind them; remove them from the message")
            (_, inputs, expected), digest = pending[kind][index]
            if length != expected:
                raise MultimodalInputError(f"an {kind} needs {expected} soft tokens but the prompt holds "
                                           f"{length}; the chat template or tokenizer does not fit this model")
            media.append(MediaBlock(kind, start, length, _content_key(digest, len(media)), inputs))
        for kind, items in pending.items():
            if counters[kind] != len(items):
                raise MultimodalInputError(f"{len(items)} {kind} block(s) were prepared but the prompt has "
                                           f"{counters[kind]}; the chat template dropped an attachment")
        return media

    # -- attachments --------------------------------------------------------------------------------------

    def _prepare(self, kind: str, source: Any) -> _Prepared:
        digest = _digest_of(source) if not isinstance(source, (str, Path)) else None
        try:
            identity = (kind, digest or _file_identity(source), self.image_token_budget, self.video_frames)
        except OSError as error:
            raise MultimodalInputError(f"cannot open {_describe(source)}: {error.strerror or error}. "
                                       "It may have been moved or deleted; attach it again.") from error
        cached = self._cache.get(identity)
        if cached is not None:
            self._cache.move_to_end(identity)
            return cached
        digest = digest or _digest_of(source)
        build = {"image": self._image, "video": self._video, "audio": self._audio}[kind]
        prepared = build(source, digest)
        self._cache[identity] = prepared
        while len(self._cache) > MEDIA_CACHE_ENTRIES:
            self._cache.popitem(last=False)
        return prepared

    def _image(self, source: Any, digest: str) -> _Prepared:
        from .image_processor import image_placeholder

        if isinstance(source, Path):
            source = str(source)
        pixels, positions, count = self.image_processor.preprocess_one(source, self.image_token_budget)
        return _Prepared([("image", (pixels[None], positions[None]), count)], image_placeholder(count), digest)

    def _video(self, source: Any, digest: str) -> _Prepared:
        from .image_processor import ImageProcessor
        from .video import DEFAULT_VIDEO_SOFT_TOKENS, extract_audio, load_video

        frames_processor = ImageProcessor(max_soft_tokens=DEFAULT_VIDEO_SOFT_TOKENS,
                                          patch_size=self.image_processor.patch_size,
                                          pooling_kernel_size=self.image_processor.pooling_kernel_size,
                                          model_patches=self.unified)
        video = load_video(source, num_frames=self.video_frames, max_soft_tokens=DEFAULT_VIDEO_SOFT_TOKENS,
                           processor=frames_processor)
        blocks = [("video", (video.pixel_values[i:i + 1], video.position_ids[i:i + 1]),
                   video.num_soft_tokens_per_frame) for i in range(len(video.timestamps))]
        text, note = video.prompt, None
        if self.can_hear and self.video_audio:
            sound = extract_audio(source, max_seconds=None)
            if sound is not None and sound[0].size:
                from .audio_io import resample

                audio = self._audio_blocks(resample(sound[0], sound[1]), _describe(source))
                if audio.blocks:
                    blocks += audio.blocks
                    text = f"{text}\n{audio.text}"
                    note = audio.note
        return _Prepared(blocks, text, digest, note)

    def _audio(self, source: Any, digest: str) -> _Prepared:
        from .audio_io import load_audio

        if isinstance(source, np.ndarray):  # microphone samples, already mono 16 kHz
            samples = source.astype(np.float32).reshape(-1)
        else:
            samples, _ = load_audio(source if not isinstance(source, Path) else str(source))
        prepared = self._audio_blocks(samples, _describe(source))
        if not prepared.blocks:
            raise MultimodalInputError(f"{_describe(source)} is too short to hear (under 10 ms); record again.")
        prepared.digest = digest
        return prepared

    def _audio_blocks(self, samples: np.ndarray, name: str) -> _Prepared:
        from .audio_features import MAX_CLIP_SECONDS, num_audio_soft_tokens, split_into_clips
        from .image_processor import audio_placeholder

        # Gemma 4 12B: any sample makes a 40 ms frame; 30 s clips are 750 frames, its audio_seq_length
        clips = split_into_clips(samples, min_samples=1 if self.unified else 161)
        blocks, text = [], ""
        for clip in clips:
            features, mask = self.audio_extractor([clip])
            if self.unified:
                count = self.audio_extractor.num_soft_tokens(len(clip))
            else:
                count = num_audio_soft_tokens(len(clip))
            blocks.append(("audio", (features, mask), count))
            text += audio_placeholder(count)
        note = None
        if len(clips) > 1:
            seconds = len(samples) / 16_000
            note = (f"{name} is {seconds:.0f} s long; Gemma hears at most {MAX_CLIP_SECONDS} s at a time, so it "
                    f"goes in as {len(clips)} consecutive clips.")
        return _Prepared(blocks, text, "", note)


def _file_identity(source: Any) -> tuple:
    path = Path(source).expanduser()
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def _read_processor_config(path: Path) -> dict:
    for name in PROCESSOR_FILES:
        file = path / name
        if file.is_file():
            try:
                return json.loads(file.read_text())
            except (OSError, json.JSONDecodeError) as error:
                raise MultimodalInputError(f"{file} is not valid JSON ({error}); re-download or re-convert "
                                           "the model") from error
    return {}


def load_processor(path: Path, config: ModelConfig) -> Optional[Processor]:
    """The checkpoint's processor, or None when the folder has no tokenizer files."""
    from .tokenizer import load_tokenizer

    tokenizer = load_tokenizer(path)
    if tokenizer is None:
        return None
    return Processor(tokenizer, config, processor_config=_read_processor_config(Path(path)))
