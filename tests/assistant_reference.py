"""Tiny random MTP drafters (`gemma4_assistant`, `gemma4_unified_assistant`) built with transformers 5.23.

transformers 5.23 cannot instantiate a drafter as published: its text config's `kv_sharing_modes`
(configuration_gemma4.py:239) refuses a config whose every layer is KV-shared, which is exactly what a drafter
is (configuration_gemma4_assistant.py:79). `all_layers_shared()` patches that property, for the duration of
building, to the documented intent: every layer reuses the target's keys and values.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from tests.reference_models import randomize_

DRAFTER_TEXT = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
    layer_types=["sliding_attention", "sliding_attention", "full_attention"], hidden_size_per_layer_input=0,
    vocab_size_per_layer_input=0, rms_norm_eps=1e-6,
)


@contextlib.contextmanager
def all_layers_shared():
    from transformers.models.gemma4.configuration_gemma4 import Gemma4TextConfig
    from transformers.models.gemma4_unified.configuration_gemma4_unified import Gemma4UnifiedTextConfig

    saved = {cls: cls.kv_sharing_modes for cls in (Gemma4TextConfig, Gemma4UnifiedTextConfig)}

    def patched(original):
        def modes(self):
            if self.num_kv_shared_layers == self.num_hidden_layers:
                return ["reuse"] * self.num_hidden_layers
            return original.fget(self)
        return property(modes)

    try:
        for cls, original in saved.items():
            cls.kv_sharing_modes = patched(original)
        yield
    finally:
        for cls, original in saved.items():
            cls.kv_sharing_modes = original


def build_drafter(out_dir: Path, target_text: dict, *, unified: bool = False, ordered: bool = True,
                  num_centroids: int = 16, top_k: int = 4, seed: int = 0,
                  **text_overrides) -> torch.nn.Module:
    """A random drafter for a target with text config `target_text` (vocabulary, head sizes, window), saved
    to `out_dir`; returns the float32 torch model with a random vocabulary order."""
    from transformers import (Gemma4AssistantConfig, Gemma4AssistantForCausalLM, Gemma4UnifiedAssistantConfig,
                              Gemma4UnifiedAssistantForCausalLM)

    torch.manual_seed(seed)
    text = dict(DRAFTER_TEXT, vocab_size=target_text["vocab_size"], head_dim=target_text["head_dim"],
                global_head_dim=target_text.get("global_head_dim", 512),
                num_key_value_heads=target_text.get("num_key_value_heads", 1),
                sliding_window=target_text["sliding_window"], **text_overrides)
    config_cls, model_cls = ((Gemma4UnifiedAssistantConfig, Gemma4UnifiedAssistantForCausalLM) if unified
                             else (Gemma4AssistantConfig, Gemma4AssistantForCausalLM))
    if unified:
        text.pop("hidden_size_per_layer_input"), text.pop("vocab_size_per_layer_input")
    config = config_cls(text_config=text, backbone_hidden_size=target_text["hidden_size"],
                        use_ordered_embeddings=ordered, num_centroids=num_centroids,
                        centroid_intermediate_top_k=top_k)
    with all_layers_shared():
        model = model_cls(config).float().eval()
        randomize_(model, seed)
        if ordered:
            order = torch.randperm(text["vocab_size"], generator=torch.Generator().manual_seed(seed + 1))
            model.masked_embedding.token_ordering.copy_(order)
        model.save_pretrained(out_dir, safe_serialization=True)
    return model


def reference_draft(model: torch.nn.Module, inputs, shared_kv: dict, position: int):
    """transformers' drafter forward in float64: (projected state, logits) as numpy arrays."""
    import copy

    ref = copy.deepcopy(model).double()
    with all_layers_shared(), torch.no_grad():
        kv = {k: (torch.as_tensor(v[0]).double(), torch.as_tensor(v[1]).double())
              for k, v in shared_kv.items()}
        out = ref(inputs_embeds=torch.as_tensor(inputs).double(), shared_kv_states=kv,
                  position_ids=torch.full((1, inputs.shape[1]), position, dtype=torch.long))
    return out.last_hidden_state.numpy(), out.logits.numpy()
