"""The configs of every tower (text, vision, audio) and of the whole model: hub `config.json` keys in,
unknown keys dropped. Plain Python (no MLX), so the planner and the converter can read them cheaply."""

from __future__ import annotations

import dataclasses
import inspect
import math
import typing
from dataclasses import InitVar, dataclass, field
from typing import Any, Optional, TypeVar, Union

T = TypeVar("T")
# MLX array dimensions are 32-bit: no size, count or token id in a real config.json comes near this.
LARGEST_CONFIG_INT = 2**31 - 1
_EXPECTED = {bool: "true or false", int: "a whole number", float: "a number", str: "text", list: "a list",
             dict: "an object ({...})"}


class ModelConfigError(ValueError):
    """A checkpoint's config.json cannot describe a model we can build; the message names the key."""


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "true/false", int: "a whole number", float: "a number", str: "text", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)


def check_value(key: str, value: Any, hint: Any) -> Any:
    """`value` when it has the JSON type `hint` declares (int, float, bool, str, list, dict, Optional, Any);
    otherwise ModelConfigError naming `key`. Whole numbers beyond LARGEST_CONFIG_INT are refused too."""
    if hint is Any:
        return value
    options = typing.get_args(hint) if typing.get_origin(hint) is Union else (hint,)
    if value is None and type(None) in options:
        return None
    kinds = [typing.get_origin(option) or option for option in options if option is not type(None)]
    for kind in kinds:
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isnan(value):
                raise ModelConfigError(f"{key} is NaN, which is not a usable number.")
            return value
        if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            if kind is int and abs(value) > LARGEST_CONFIG_INT:
                raise ModelConfigError(f"{key} is {value:,}, far beyond any real model "
                                       f"(at most {LARGEST_CONFIG_INT:,}).")
            return value
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    expected = " or ".join(_EXPECTED.get(kind, kind.__name__) for kind in kinds)
    raise ModelConfigError(f"{key} must be {expected}, not {shown} ({_json_kind(value)}).")


def dataclass_from_dict(cls: type[T], params: Any, section: str = "") -> T:
    """Build dataclass `cls` from a config dict, keeping only the keys it declares.

    Each value is checked against its field's type first, so a hand-edited or damaged config.json gives
    a ModelConfigError naming the key (`section.key`), never a TypeError from deep inside the model.
    """
    prefix = f"{section}." if section else ""
    if not isinstance(params, dict):
        raise ModelConfigError(f"{section or 'the config'} must be an object ({{...}}), not "
                               f"{_json_kind(params)}.")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    values = {k: check_value(prefix + k, v, hints[k]) for k, v in params.items() if k in names}
    if "section" in inspect.signature(cls).parameters:  # an InitVar: later checks name keys the same way
        values["section"] = section
    return cls(**values)


def _check_at_least(section: str, config: Any, minimum: int, names: tuple[str, ...]) -> None:
    prefix = f"{section}." if section else ""
    for name in names:
        value = getattr(config, name)
        if value is not None and value < minimum:
            raise ModelConfigError(f"{prefix}{name} is {value}; it must be at least {minimum}.")


SLIDING, FULL = "sliding_attention", "full_attention"
SUPPORTED_TYPES = ("gemma4", "gemma4_text", "gemma4_unified", "gemma4_unified_text", "gemma3", "gemma3_text")
# activation names each tower implements (the towers map them to functions)
VISION_ACTIVATIONS = ("gelu_pytorch_tanh", "gelu", "silu", "relu")
TEXT_ROPE_TYPES = ("default", "linear", "proportional")  # what mlx_model/language.py implements
AUDIO_ACTIVATIONS = ("silu", "swish", "gelu", "gelu_pytorch_tanh", "relu")


@dataclass
class TextConfig:
    """Text decoder config; accepts hub and transformers-5 `config.json` keys (Gemma 4 and Gemma 3)."""

    model_type: str = "gemma4_text"
    vocab_size: int = 262_144
    hidden_size: int = 2304
    intermediate_size: int = 9216
    num_hidden_layers: int = 30
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    head_dim: int = 256
    global_head_dim: Optional[int] = None
    num_global_key_value_heads: Optional[int] = None
    per_layer_config: Optional[dict] = None
    hidden_activation: str = "gelu_pytorch_tanh"
    max_position_embeddings: int = 131_072
    rms_norm_eps: float = 1e-6
    pad_token_id: Optional[int] = 0
    tie_word_embeddings: bool = True
    rope_parameters: Optional[dict] = None
    attention_bias: bool = False
    sliding_window: Optional[int] = 512
    sliding_window_pattern: Optional[int] = None
    layer_types: Optional[list] = None
    final_logit_softcapping: Optional[float] = None
    use_bidirectional_attention: Union[str, bool, None] = None  # Gemma 4: None/"vision"/"all"; Gemma 3: false
    vocab_size_per_layer_input: int = 262_144
    hidden_size_per_layer_input: Optional[int] = 256
    attention_k_eq_v: bool = False
    num_kv_shared_layers: int = 0
    enable_moe_block: bool = False
    use_double_wide_mlp: bool = False
    num_experts: Optional[int] = None
    top_k_experts: Optional[int] = None
    moe_intermediate_size: Optional[int] = None
    # Gemma 3 only
    query_pre_attn_scalar: Optional[float] = None
    attn_logit_softcapping: Optional[float] = None
    rope_theta: Optional[float] = None
    rope_local_base_freq: Optional[float] = None
    rope_scaling: Optional[dict] = None
    layer_head_dims: list = field(default_factory=list, repr=False)
    layer_kv_heads: list = field(default_factory=list, repr=False)
    section: InitVar[str] = ""  # where the keys sit in config.json ("text_config" or top level): for messages

    @property
    def is_gemma3(self) -> bool:
        return self.model_type.startswith("gemma3")

    @property
    def blocks_on_every_layer(self) -> bool:
        """Whether image blocks attend bidirectionally on full layers too, past the sliding window
        (gemma4_unified: modeling_gemma4_unified.py:1172-1184 passes the blocks to every mask)."""
        return self.model_type.startswith("gemma4_unified")

    @classmethod
    def from_dict(cls, params: dict[str, Any], section: str = "") -> "TextConfig":
        """Build from a (text) config dict; unknown keys are dropped, values are checked
        (ModelConfigError)."""
        if not isinstance(params, dict):
            raise ModelConfigError(f"{section or 'the text config'} must be an object ({{...}}), "
                                   f"not {_json_kind(params)}.")
        params = dict(params)
        if str(params.get("model_type", "")).startswith("gemma3"):
            params.setdefault("sliding_window", 4096)
            params.setdefault("hidden_size_per_layer_input", 0)
            params.setdefault("query_pre_attn_scalar", 256)
        elif str(params.get("model_type", "")).startswith("gemma4_unified"):
            # configuration_gemma4_unified.py:124-150: no PLE, window 1024, 256K positions, image blocks
            for key, value in (("hidden_size_per_layer_input", 0), ("sliding_window", 1024),
                               ("max_position_embeddings", 262_144),
                               ("use_bidirectional_attention", "vision")):
                params.setdefault(key, value)
        return dataclass_from_dict(cls, params, section)

    def __post_init__(self, section: str = ""):
        self._check(f"{section}." if section else "")
        if self.use_bidirectional_attention == "all":
            raise ModelConfigError(
                "This checkpoint uses bidirectional attention over all tokens (an embedding model), "
                "which the chat app does not run."
            )
        if self.layer_types is None:
            pattern = self.sliding_window_pattern or 6  # configuration_gemma4.py:190 default 5:1
            self.layer_types = [
                SLIDING if (i + 1) % pattern else FULL for i in range(self.num_hidden_layers)
            ]
        self.layer_types = list(self.layer_types)
        if not self.is_gemma3 and self.layer_types[-1] != FULL:
            self.layer_types[-1] = FULL  # configuration_gemma4.py:197 forces the last layer full
        self._resolve_rope()
        self._resolve_layer_shapes()
        if self.enable_moe_block and not (self.num_experts and self.top_k_experts and self.moe_intermediate_size):
            raise ModelConfigError("enable_moe_block needs num_experts, top_k_experts and moe_intermediate_size.")

    def _resolve_rope(self):
        if self.is_gemma3:
            # configuration_gemma3.py:136-156: old-style rope_theta / rope_local_base_freq / rope_scaling
            params = self.rope_parameters or {SLIDING: {"rope_type": "default"}, FULL: {"rope_type": "default"}}
            params = {k: dict(v) for k, v in params.items()}
            if self.rope_scaling:
                params[FULL].update(self.rope_scaling)
            params[FULL].setdefault("rope_theta", self.rope_theta or 1_000_000.0)
            params[SLIDING].setdefault("rope_theta", self.rope_local_base_freq or 10_000.0)
            self.rope_parameters = params
        elif self.rope_parameters is None:
            self.rope_parameters = {
                SLIDING: {"rope_type": "default", "rope_theta": 10_000.0},
                FULL: {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1_000_000.0},
            }

    def _resolve_layer_shapes(self):
        """Per-layer head dim and KV heads (configuration_gemma4.py:209-222)."""
        overrides: dict[int, dict] = {}
        if self.per_layer_config:
            overrides = {int(k): dict(v) for k, v in self.per_layer_config.items() if str(k).isdigit()}
        elif not self.is_gemma3:
            full = {"head_dim": self.global_head_dim or 512}
            if self.attention_k_eq_v and self.num_global_key_value_heads is not None:
                full["num_key_value_heads"] = self.num_global_key_value_heads
            overrides = {i: full for i, t in enumerate(self.layer_types) if t == FULL}
        self.layer_head_dims = [overrides.get(i, {}).get("head_dim", self.head_dim)
                                for i in range(self.num_hidden_layers)]
        self.layer_kv_heads = [overrides.get(i, {}).get("num_key_value_heads", self.num_key_value_heads)
                               for i in range(self.num_hidden_layers)]

    def _check(self, prefix: str) -> None:
        """Sizes and layer lists that every later step relies on, checked before anything is derived."""
        _check_at_least(prefix.rstrip("."), self, 1, (
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "max_position_embeddings", "global_head_dim",
            "num_global_key_value_heads", "num_experts", "top_k_experts", "moe_intermediate_size"))
        _check_at_least(prefix.rstrip("."), self, 0, (
            "vocab_size_per_layer_input", "hidden_size_per_layer_input", "sliding_window",
            "num_kv_shared_layers", "sliding_window_pattern"))
        if self.num_attention_heads % self.num_key_value_heads:
            raise ModelConfigError(f"{prefix}num_attention_heads {self.num_attention_heads} is not a "
                                   f"multiple of num_key_value_heads {self.num_key_value_heads}.")
        if self.num_kv_shared_layers >= self.num_hidden_layers:
            raise ModelConfigError(f"{prefix}num_kv_shared_layers {self.num_kv_shared_layers} must be below "
                                   f"num_hidden_layers {self.num_hidden_layers}.")
        if self.layer_types is not None:
            known = all(kind in (SLIDING, FULL) for kind in self.layer_types)
            if len(self.layer_types) != self.num_hidden_layers or not known:
                raise ModelConfigError(
                    f"{prefix}layer_types must list {self.num_hidden_layers} entries (num_hidden_layers), "
                    f"each '{SLIDING}' or '{FULL}'; it has {len(self.layer_types)}.")
        if self.rope_parameters is not None and not {SLIDING, FULL} <= set(self.rope_parameters):
            raise ModelConfigError(f"{prefix}rope_parameters must have an entry for '{SLIDING}' and for "
                                   f"'{FULL}' layers.")
        for key in ("rope_parameters", "rope_scaling"):
            table = getattr(self, key)
            entries = table.items() if key == "rope_parameters" and table else [("", table or {})]
            for layer, entry in entries:
                where = f"{prefix}{key}.{layer}." if layer else f"{prefix}{key}."
                if not isinstance(entry, dict):
                    raise ModelConfigError(f"{prefix}{key} must map each layer type to an object of "
                                           "settings.")
                for name in ("rope_theta", "partial_rotary_factor", "factor"):
                    if name in entry:
                        check_value(where + name, entry[name], float)
                if entry.get("rope_type", "default") not in TEXT_ROPE_TYPES:
                    raise ModelConfigError(f"{where}rope_type is {entry.get('rope_type')!r}; expected one of "
                                           f"{', '.join(TEXT_ROPE_TYPES)}.")
        if self.per_layer_config and not all(isinstance(v, dict) for v in self.per_layer_config.values()):
            raise ModelConfigError(f"{prefix}per_layer_config must map layer numbers to objects.")

    @property
    def first_shared_layer(self) -> int:
        return self.num_hidden_layers - self.num_kv_shared_layers

    def kv_source_layers(self) -> list[int]:
        """For each layer, the layer whose keys/values it attends to (itself unless KV-shared).

        Shared layers reuse the last non-shared layer of the same type (configuration_gemma4.py:227-252).
        """
        first = self.first_shared_layer
        last_of_type = {t: i for i, t in enumerate(self.layer_types[:first])}
        sources = list(range(self.num_hidden_layers))
        for i in range(first, self.num_hidden_layers):
            if self.layer_types[i] not in last_of_type:
                raise ModelConfigError(f"KV-shared layer {i} has no earlier {self.layer_types[i]} layer to share.")
            sources[i] = last_of_type[self.layer_types[i]]
        return sources


@dataclass
class VisionConfig:
    """The fields of transformers' Gemma4VisionConfig; unknown keys are dropped by `from_dict`."""

    model_type: str = "gemma4_vision"
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 16
    num_attention_heads: int = 12
    num_key_value_heads: int = 12
    head_dim: int = 64
    hidden_activation: str = "gelu_pytorch_tanh"
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 131_072
    attention_bias: bool = False
    attention_dropout: float = 0.0
    rope_parameters: Optional[dict] = field(
        default_factory=lambda: {"rope_theta": 100.0, "rope_type": "axial"}
    )
    pooling_kernel_size: int = 3
    patch_size: int = 16
    position_embedding_size: int = 10 * 1024
    use_clipped_linears: bool = False
    standardize: bool = False
    initializer_range: float = 0.02

    def __post_init__(self):
        _check_at_least("vision_config", self, 1, (
            "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "pooling_kernel_size", "patch_size", "position_embedding_size",
            "max_position_embeddings"))
        if self.hidden_activation not in VISION_ACTIVATIONS:
            raise ModelConfigError(
                f"vision_config.hidden_activation {self.hidden_activation!r} is not supported "
                f"(expected one of {', '.join(VISION_ACTIVATIONS)})."
            )
        if self.head_dim % 4:
            raise ModelConfigError(
                f"vision_config.head_dim must be a multiple of 4 for 2-D RoPE, got {self.head_dim}."
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ModelConfigError(
                f"vision_config.num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}."
            )
        rope_type = (self.rope_parameters or {}).get("rope_type", "axial")
        if rope_type not in ("axial", "default"):
            raise ModelConfigError(f"vision RoPE type {rope_type!r} is not supported (HF:722 axial only).")

    @property
    def rope_theta_value(self) -> Any:
        """rope_theta as config.json gives it (checked by from_dict)."""
        return (self.rope_parameters or {}).get("rope_theta", 100.0)

    @property
    def rope_theta(self) -> float:
        return float(self.rope_theta_value)

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> "VisionConfig":
        """Build from a hub `vision_config` dict (a flat `rope_theta` is folded into `rope_parameters`)."""
        params = dict(params)
        if "rope_theta" in params and "rope_parameters" not in params:
            params["rope_parameters"] = {"rope_theta": params["rope_theta"], "rope_type": "axial"}
        config = dataclass_from_dict(cls, params, "vision_config")
        check_value("vision_config.rope_parameters.rope_theta", config.rope_theta_value, float)
        return config


@dataclass
class AudioConfig:
    """Audio tower config; the fields of transformers' Gemma4AudioConfig, unknown keys dropped."""

    model_type: str = "gemma4_audio"
    hidden_size: int = 1024
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    hidden_act: str = "silu"
    subsampling_conv_channels: list = field(default_factory=lambda: [128, 32])
    conv_kernel_size: int = 5
    residual_weight: float = 0.5
    attention_chunk_size: int = 12
    attention_context_left: int = 13
    attention_context_right: int = 0
    attention_logit_cap: float = 50.0
    attention_invalid_logits_value: float = -1.0e9
    use_clipped_linears: bool = True
    rms_norm_eps: float = 1e-6
    gradient_clipping: float = 1e10
    output_proj_dims: int = 1536
    initializer_range: float = 0.02

    def __post_init__(self):
        _check_at_least("audio_config", self, 1, (
            "hidden_size", "num_hidden_layers", "num_attention_heads", "conv_kernel_size",
            "attention_chunk_size", "output_proj_dims"))
        _check_at_least("audio_config", self, 0, ("attention_context_left", "attention_context_right"))
        self.subsampling_conv_channels = list(self.subsampling_conv_channels)
        if len(self.subsampling_conv_channels) != 2 or not all(
                isinstance(c, int) and not isinstance(c, bool) and 0 < c <= LARGEST_CONFIG_INT
                for c in self.subsampling_conv_channels):
            raise ModelConfigError(
                f"audio_config.subsampling_conv_channels must list two channel counts, got "
                f"{self.subsampling_conv_channels}."
            )
        if self.hidden_size % self.num_attention_heads:
            raise ModelConfigError(
                f"audio_config.hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}."
            )
        if self.hidden_act not in AUDIO_ACTIVATIONS:
            raise ModelConfigError(
                f"audio_config.hidden_act {self.hidden_act!r} is not supported; expected one of "
                f"{sorted(AUDIO_ACTIVATIONS)}."
            )
        # sanitize() tells HF from MLX conv layouts by shape; these values would make them identical.
        if self.subsampling_conv_channels[0] == 3 or self.conv_kernel_size == 1:
            raise ModelConfigError(
                "audio_config with subsampling_conv_channels[0] == 3 or conv_kernel_size == 1 "
                "is not supported."
            )

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> "AudioConfig":
        """Build from a hub `audio_config` dict, dropping keys this tower does not use."""
        return dataclass_from_dict(cls, params, "audio_config")


@dataclass
class UnifiedVisionConfig:
    """gemma4_unified's vision embedder (configuration_gemma4_unified.py:238): raw 48x48 patches, no tower."""

    model_type: str = "gemma4_unified_vision"
    patch_size: int = 16
    pooling_kernel_size: int = 3
    mm_embed_dim: int = 3840
    mm_posemb_size: int = 1120
    rms_norm_eps: float = 1e-6
    output_proj_dims: Optional[int] = None  # equals mm_embed_dim (the embedder projects mm_embed_dim)
    model_patch_size: Optional[int] = None  # hub configs repeat patch_size * pooling_kernel_size

    def __post_init__(self):
        _check_at_least("vision_config", self, 1, (
            "patch_size", "pooling_kernel_size", "mm_embed_dim", "mm_posemb_size", "output_proj_dims"))
        self.output_proj_dims = self.output_proj_dims or self.mm_embed_dim
        if self.output_proj_dims != self.mm_embed_dim:
            raise ModelConfigError(f"vision_config.output_proj_dims {self.output_proj_dims} must equal "
                                   f"mm_embed_dim {self.mm_embed_dim}: the embedder projects its own "
                                   "features.")
        merged = self.patch_size * self.pooling_kernel_size
        if self.model_patch_size not in (None, merged):  # configuration_gemma4_unified.py:274 setter
            raise ModelConfigError(f"vision_config.model_patch_size {self.model_patch_size} must equal "
                                   f"patch_size * pooling_kernel_size = {merged}.")
        self.model_patch_size = merged

    @property
    def patch_dim(self) -> int:
        """Raw values per merged patch: (48 * 48 * 3 = 6912 by default)."""
        return self.model_patch_size ** 2 * 3

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> "UnifiedVisionConfig":
        return dataclass_from_dict(cls, params, "vision_config")


@dataclass
class UnifiedAudioConfig:
    """gemma4_unified's audio embedder (configuration_gemma4_unified.py:36): 40 ms of raw 16 kHz samples
    per soft token; `hidden_size`, `output_proj_dims` and `audio_samples_per_token` name the same width."""

    model_type: str = "gemma4_unified_audio"
    audio_embed_dim: int = 640
    rms_norm_eps: float = 1e-6

    def __post_init__(self):
        _check_at_least("audio_config", self, 1, ("audio_embed_dim",))

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> "UnifiedAudioConfig":
        params = dict(check_value("audio_config", params, dict))
        for alias in ("audio_samples_per_token", "output_proj_dims", "hidden_size"):
            if alias in params and "audio_embed_dim" not in params:
                params["audio_embed_dim"] = params[alias]
        return dataclass_from_dict(cls, params, "audio_config")


@dataclass
class ModelConfig:
    """Top-level config: a Gemma 4 (multimodal or text-only) or Gemma 3 text checkpoint."""

    model_type: str
    text_config: TextConfig
    vision_config: Optional[dict] = None
    audio_config: Optional[dict] = None
    tie_word_embeddings: bool = True
    image_token_id: int = 258_880
    audio_token_id: int = 258_881
    video_token_id: int = 258_884
    boi_token_id: int = 255_999
    eoi_token_id: int = 258_882
    boa_token_id: int = 256_000
    eoa_token_id: int = 258_883
    eos_token_id: Any = None
    quantization: Optional[dict] = None
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def is_unified(self) -> bool:
        """Gemma 4 12B: images and audio through small embedders instead of towers."""
        return self.model_type == "gemma4_unified"

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> "ModelConfig":
        """Parse a config.json dict (nested `text_config` or flat text-only); every value the model uses is
        checked first, so a damaged file gives a ModelConfigError naming the key."""
        if not isinstance(params, dict):
            raise ModelConfigError(f"the config must be an object ({{...}}), not {_json_kind(params)}.")
        model_type = params.get("model_type")
        if model_type not in SUPPORTED_TYPES:
            raise ModelConfigError(
                f"model_type {model_type!r} is not a Gemma 4 or Gemma 3 model "
                f"(expected one of {', '.join(SUPPORTED_TYPES)})."
            )
        if "text_config" in params:
            text_params = check_value("text_config", params.get("text_config") or {}, dict)
            text_params = {"model_type": model_type + "_text", **text_params}
            section = "text_config"
            vision = check_value("vision_config", params.get("vision_config"), Optional[dict])
            audio = check_value("audio_config", params.get("audio_config"), Optional[dict])
            if model_type == "gemma3":
                vision = None  # Gemma 3's SigLIP tower is not part of this app: text only
        else:
            text_params, vision, audio, section = dict(params), None, None, ""
        tie = params.get("tie_word_embeddings", text_params.get("tie_word_embeddings", True))
        tie = check_value("tie_word_embeddings", tie, bool)
        text_params["tie_word_embeddings"] = tie
        text_config = TextConfig.from_dict(text_params, section)
        unified = model_type == "gemma4_unified"
        if vision is not None:  # checked here; the model builds its own from the dict
            (UnifiedVisionConfig if unified else VisionConfig).from_dict(vision)
        if audio is not None:
            (UnifiedAudioConfig if unified else AudioConfig).from_dict(audio)
        ids = {name: check_value(name, params.get(name, default), int) for name, default in (
            ("image_token_id", params.get("image_token_index", 258_880)), ("audio_token_id", 258_881),
            ("video_token_id", 258_884), ("boi_token_id", 255_999), ("eoi_token_id", 258_882),
            ("boa_token_id", 256_000), ("eoa_token_id", params.get("eoa_token_index", 258_883)))}
        if "eoa_token_index" in params:
            ids["eoa_token_id"] = check_value("eoa_token_index", params["eoa_token_index"], int)
        eos = params.get("eos_token_id", text_params.get("eos_token_id"))
        for token in eos if isinstance(eos, list) else [] if eos is None else [eos]:
            check_value("eos_token_id", token, int)
        return cls(
            model_type=model_type,
            text_config=text_config,
            vision_config=vision,
            audio_config=audio,
            tie_word_embeddings=tie,
            eos_token_id=eos,
            quantization=check_value("quantization", params.get("quantization"), Optional[dict]),
            raw=params,
            **ids,
        )
