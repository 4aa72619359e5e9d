"""Hugging Face causal LMs on the macro (asim.llm): conversion, KV-cache generation, noise
keyed by token, the KV-write cost. Tiny randomly initialised GPT-2 and LLaMA configs, no
download; skipped without ``transformers``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

import asim  # noqa: E402
from asim import (  # noqa: E402
    CostConfig,
    MacroConfig,
    NoiseConfig,
    acim_modules,
    convert_to_acim,
    estimate_cost,
    resample_noise,
    set_mode,
    set_sample_index,
    to_float,
)
from asim.llm import ACiMAttention, ACiMConv1D, ACiMTokenLinear  # noqa: E402

VOCAB, LAYERS, HEADS, KV_HEADS, HIDDEN = 48, 2, 4, 2, 32
SAMPLE = MacroConfig(act_scale="sample")  # every token its own activation scale
LOSSY = SAMPLE.replace(adc_bits=5, nrow=16)
NOISE = NoiseConfig(rand_sigma=0.4)
CACHE = "cache" if int(transformers.__version__.split(".")[0]) >= 5 else "past_key_values"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny matmuls: one thread is ~10x faster than several contending ones."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def gpt2() -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=64, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(cfg).eval()


def llama() -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=64,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(cfg).eval()


MODELS = {"gpt2": gpt2, "llama": llama}


def ids(batch: int = 2, length: int = 7, seed: int = 1) -> torch.Tensor:
    return torch.randint(1, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def logits(model, tokens, **kw) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=tokens, **kw).logits


def greedy_rerun(model, prompt, steps: int) -> torch.Tensor:
    """Greedy decoding that re-runs the whole sequence every step (no cache)."""
    seq = prompt
    for _ in range(steps):
        nxt = logits(model, seq, use_cache=False)[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
    return seq


def generate(model, prompt, steps: int) -> torch.Tensor:
    return model.generate(
        prompt, max_new_tokens=steps, min_new_tokens=steps, do_sample=False, use_cache=True
    )


# ---------------------------------------------------------------------------- conversion
@pytest.mark.parametrize("name", MODELS)
def test_every_matmul_on_the_macro(name):
    """Every projection, MLP matmul and the LM head becomes an ACiM layer, every attention
    layer gets QK^T and AV on the macro, and one forward calls each attention once."""
    float_model = MODELS[name]()
    sim = convert_to_acim(float_model, SAMPLE)
    kinds = [type(m) for _, m in acim_modules(sim)]
    # per block: GPT-2 c_attn, c_proj, c_fc, c_proj (Conv1D); LLaMA q, k, v, o, gate, up, down
    blocks = {"gpt2": 4, "llama": 7}[name] * LAYERS
    assert kinds.count(ACiMConv1D) == (blocks if name == "gpt2" else 0)
    assert kinds.count(ACiMTokenLinear) == (1 if name == "gpt2" else blocks + 1)  # + LM head
    assert kinds.count(ACiMAttention) == LAYERS
    left = [n for n, m in sim.named_modules() if type(m) in (nn.Linear, transformers.Conv1D)]
    assert left == []
    assert sim.config._attn_implementation == "asim"
    assert float_model.config._attn_implementation != "asim"  # a copy was converted
    calls = []
    hooks = [
        m.register_forward_hook(lambda mod, a, out: calls.append(a[0].shape))
        for _, m in acim_modules(sim)
        if isinstance(m, ACiMAttention)
    ]
    logits(sim, ids())
    for h in hooks:
        h.remove()
    assert len(calls) == LAYERS
    assert all(s == (2, HEADS, 7, HIDDEN // HEADS) for s in calls)


@pytest.mark.parametrize("name", MODELS)
def test_lossless_noise_free_equals_quantized_inference(name):
    """The lossless macro without noise is quantized inference, bit for bit, and close to
    the float model; a lossy macro is not exact."""
    float_model = MODELS[name]()
    sim = convert_to_acim(float_model, SAMPLE)
    x = ids()
    simulated = logits(sim, x)
    set_mode(sim, "inference")
    assert torch.equal(simulated, logits(sim, x))
    reference = logits(float_model, x)
    err = (simulated - reference).abs().max() / reference.abs().max()
    assert 0 < err < 0.05
    lossy = convert_to_acim(float_model, LOSSY)
    assert not torch.equal(logits(lossy, x), simulated)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("noise", [None, NOISE], ids=["noise-free", "noisy"])
def test_kv_cache_generation_equals_rerun(name, noise):
    """Greedy generation with a KV cache gives the tokens of re-running the whole sequence
    every step, and the same last-step logits bit for bit: a lossy macro, noise off and on
    (same seed)."""
    sim = convert_to_acim(MODELS[name](), LOSSY, noise)
    resample_noise(sim, 3)
    prompt = ids(2, 5)
    cached = generate(sim, prompt, 5)
    assert cached.shape == (2, 10)
    assert torch.equal(cached, greedy_rerun(sim, prompt, 5))
    with torch.no_grad():  # the last token's logits: one step on the cache vs the full run
        out = sim(input_ids=cached[:, :-1], use_cache=True)
        past = {CACHE: getattr(out, CACHE)}
        step = sim(input_ids=cached[:, -1:], use_cache=True, **past).logits
    assert torch.equal(step[:, -1], logits(sim, cached)[:, -1])


def test_noise_is_keyed_by_sample_and_position():
    """With noise, a sequence's logits do not depend on its batch (set_sample_index names
    it), are repeatable for a seed and change with the seed and with the sample index."""
    sim = convert_to_acim(gpt2(), LOSSY, NOISE)
    a, b = ids(1, 6, seed=1), ids(1, 6, seed=2)
    resample_noise(sim, 0)
    with set_sample_index(sim, [5, 9]):
        pair = logits(sim, torch.cat([a, b]))
    with set_sample_index(sim, [9]):
        alone = logits(sim, b)
    assert torch.equal(pair[1:], alone)
    with set_sample_index(sim, [9]):
        assert torch.equal(logits(sim, b), alone)  # no state carried between calls
    with set_sample_index(sim, [4]):
        assert not torch.equal(logits(sim, b), alone)  # another sample: other draws
    resample_noise(sim, 1)
    with set_sample_index(sim, [9]):
        assert not torch.equal(logits(sim, b), alone)  # another chip
    noise_free = convert_to_acim(gpt2(), LOSSY)
    assert not torch.equal(logits(noise_free, b), alone)


@pytest.mark.parametrize("name", MODELS)
def test_padding_mask_and_positions(name):
    """A left-padded row equals the sequence alone (lossless, noise-free): the padding mask
    hides the pad tokens and positions count real tokens only; without the mask it differs."""
    sim = convert_to_acim(MODELS[name](), SAMPLE)
    short = ids(1, 4, seed=3)
    batch = torch.cat([torch.zeros(1, 2, dtype=torch.long), short], dim=1)
    batch = torch.cat([batch, ids(1, 6, seed=4)])
    mask = torch.ones_like(batch)
    mask[0, :2] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    padded = logits(sim, batch, attention_mask=mask, position_ids=pos)[0, 2:]
    alone = logits(sim, short)[0]
    torch.testing.assert_close(padded, alone, rtol=1e-5, atol=1e-5)
    unmasked = logits(sim, batch, position_ids=pos)[0, 2:]
    assert (unmasked - alone).abs().max() > 1e-3


def test_gqa_heads_share_their_kv_head():
    """LLaMA with 4 query heads on 2 kv heads: the simulated attention equals the float
    attention closely on the ideal-ish macro (16-bit everything), so the grouping is right."""
    fine = MacroConfig(weight_bits=16, input_bits=16, adc_bits=24, act_scale="sample")
    float_model = llama()
    sim = convert_to_acim(float_model, fine)
    set_mode(sim, "inference")
    x = ids()
    torch.testing.assert_close(logits(sim, x), logits(float_model, x), rtol=1e-3, atol=1e-3)


def test_train_mode_fake_quantizes_with_gradients():
    """Train mode (QAT) gives the quantized result within float rounding, and gradients reach
    every matmul's weight and the embedding through QK^T and AV."""
    sim = convert_to_acim(llama(), SAMPLE)
    x = ids()
    set_mode(sim, "inference")
    reference = logits(sim, x)
    set_mode(sim, "train")
    out = sim(input_ids=x).logits
    torch.testing.assert_close(out.detach(), reference, rtol=1e-4, atol=1e-4)
    out.square().mean().backward()
    grads = [m.weight.grad for _, m in acim_modules(sim) if hasattr(m, "weight")]
    assert len(grads) == LAYERS * 7 + 1 and all(g is not None and g.abs().sum() > 0 for g in grads)


# ---------------------------------------------------------------------------- mapping
def test_last_layer_policy_and_tied_head():
    """The LM head follows last_layer (digital / float / on the macro) and stays tied to
    the embedding; attention parts and layer_macros reach QK^T and AV."""
    base = gpt2()
    sim = convert_to_acim(base, SAMPLE)
    assert isinstance(sim.lm_head, ACiMTokenLinear)
    assert sim.lm_head.weight is sim.transformer.wte.weight
    digital = convert_to_acim(base, SAMPLE, NOISE, last_layer="digital", last_layer_bits=6)
    assert digital.lm_head.digital and digital.lm_head.noise is None
    assert digital.lm_head.macro.weight_bits == 6
    kept = convert_to_acim(base, SAMPLE, last_layer="float")
    assert type(kept.lm_head) is nn.Linear
    with pytest.raises(ValueError, match="last_layer='fp8' is not valid"):
        convert_to_acim(base, SAMPLE, last_layer="fp8")
    parts = convert_to_acim(
        base,
        SAMPLE,
        attention={"qk": {"input_bits": 9}, "proj": {"adc_bits": 7}},
        layer_macros=[{"match": "transformer.h.1.attn.av", "weight_bits": 6}],
    )
    attn0, attn1 = (parts.transformer.h[i].attn for i in range(2))
    assert attn0.acim.qk_macro.input_bits == 9 and attn0.c_attn.macro.adc_bits == 7
    assert attn0.acim.av_macro.weight_bits == 8 and attn1.acim.av_macro.weight_bits == 6
    assert parts.transformer.h[0].mlp.c_fc.macro.adc_bits == 8  # not an attention part


def test_a_subclass_of_a_transformers_model_converts():
    """A user's subclass (defined outside transformers) is a transformers model too."""

    class MyGPT(transformers.GPT2LMHeadModel):
        pass

    torch.manual_seed(0)
    model = MyGPT(transformers.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=1, n_head=4))
    sim = convert_to_acim(model, SAMPLE)
    assert isinstance(sim.transformer.h[0].attn.c_attn, ACiMConv1D)
    assert isinstance(sim.transformer.h[0].attn.acim, ACiMAttention)


def test_to_float_round_trip():
    """to_float gives the float GPT-2 back (Conv1D, float attention), same logits."""
    base = gpt2()
    back = to_float(convert_to_acim(base, SAMPLE))
    assert not list(acim_modules(back))
    assert type(back.transformer.h[0].attn.c_attn) is transformers.Conv1D
    x = ids()
    torch.testing.assert_close(logits(back, x), logits(base, x))


# ---------------------------------------------------------------------------- cost
def test_cost_counts_kv_writes_per_generated_token():
    """N generated tokens write N rows of K and V per layer (H_kv * d codes each), on top of
    the prompt's; QK^T conversions grow with the context; the write energy is bits * nrow *
    the per-row write capacitance."""
    sim = convert_to_acim(llama(), SAMPLE.replace(weight_bits=6))
    d, P, N = HIDDEN // HEADS, 5, 3
    cost = CostConfig()
    prompt_only = estimate_cost(sim, seq_len=P, cost=cost)
    generated = estimate_cost(sim, seq_len=P, generated_tokens=N, cost=cost)
    per_token_bits = KV_HEADS * d * 6  # keys and values are 6-bit codes
    for layer in range(LAYERS):
        name = f"model.layers.{layer}.self_attn.acim"
        rows = {x["name"]: x for x in generated.layers}
        assert rows[name + ".qk"]["cim_write_bits"] == (P + N) * per_token_bits
        assert rows[name + ".av"]["cim_write_bits"] == (P + N) * per_token_bits
    extra = generated.totals["cim_write_bits"] - prompt_only.totals["cim_write_bits"]
    assert extra == N * LAYERS * 2 * per_token_bits
    e = generated.totals["energy_breakdown_pj"]["write"]
    fj = 255 * 0.35 * 0.9**2 / 1000  # pJ per bit at nrow 255, 0.9 V
    assert e == pytest.approx(generated.totals["cim_write_bits"] * fj)
    one = estimate_cost(sim, seq_len=P, generated_tokens=1)
    qk = "model.layers.0.self_attn.acim.qk"
    conv = {r["name"]: r["adc_conversions"] for r in prompt_only.layers}[qk]
    per_output = conv / (HEADS * P * P)  # the prompt: P queries x P keys per head
    step = {r["name"]: r["adc_conversions"] for r in one.layers}[qk] - conv
    assert step == HEADS * (P + 1) * per_output  # one query against P + 1 keys
    with pytest.raises(ValueError, match="seq_len=0 must be a positive integer"):
        estimate_cost(sim, seq_len=0)
    prompt = estimate_cost(sim, ids(1, P), generated_tokens=N)  # the prompt's own tokens
    assert prompt.totals["cim_write_bits"] == generated.totals["cim_write_bits"]
    with pytest.raises(ValueError, match="= 65 exceeds the model's 64 positions"):
        estimate_cost(sim, seq_len=60, generated_tokens=5)
    cnn = convert_to_acim(nn.Sequential(nn.Linear(4, 4)))
    with pytest.raises(ValueError, match="need a transformers causal LM"):
        estimate_cost(cnn, seq_len=4)


def test_batch_act_scale_warns():
    """act_scale='batch' (the default) makes a token depend on its call: said at conversion."""
    with pytest.warns(UserWarning, match="act_scale='sample' scales every token on its own"):
        convert_to_acim(gpt2(), MacroConfig())


def test_asim_imports_transformers_only_in_asim_llm():
    """``transformers`` is imported by asim.llm alone, which ``import asim`` never loads."""
    root = Path(asim.__file__).parent
    for path in root.rglob("*.py"):
        if path.parent.name == "llm":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n.split(".")[0] == "transformers" for n in names), path
    init = ast.parse((root / "__init__.py").read_text())
    assert not any(isinstance(n, ast.ImportFrom) and n.module == "llm" for n in ast.walk(init))
    assert asim.llm.ATTENTION == "asim"


@pytest.mark.slow
def test_import_asim_does_not_import_transformers():
    code = "import asim, sys; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_calibration_observes_qk_and_av_as_the_oracle_counts_them(name):
    """calibrate_adc sees a transformers attention's QK^T (as NAME) and AV (as NAME.av): the
    counts the oracle's bit-level loop makes of the same integer operands, per GQA group;
    ``max`` then clips nothing on its own data and Calibration.apply sets both macros."""
    from asim import calibrate_adc
    from asim.calibrate import observe_counts

    from . import oracle

    macro = SAMPLE.replace(weight_bits=4, input_bits=4, nrow=8, adc_bits=4)
    sim = convert_to_acim(MODELS[name](), macro)
    attn = [(n, m) for n, m in acim_modules(sim) if isinstance(m, ACiMAttention)]
    operands: dict[str, list] = {}
    for n, m in attn:
        codes = m._matmul

        def capture(x, w, mac, noise, signed, rows, sub, n=n, codes=codes):
            operands.setdefault(n + ("", ".av")[sub], []).append((x, w, mac, signed))
            return codes(x, w, mac, noise, signed, rows, sub)

        m._matmul = capture
    hists, _ = observe_counts(sim, [ids(2, 9)])
    assert {k for k in hists if k.startswith(attn[0][0])} == {attn[0][0], attn[0][0] + ".av"}
    for key, calls in operands.items():
        trace: list[dict] = []
        for x, w, mac, signed in calls:  # weight role [..., O, R]: the keys / the values
            R = w.shape[-2]
            oracle.oracle_mvm(x, w.transpose(-2, -1), signed_act=signed, wbit=mac.weight_bits,
                              xbit=mac.input_bits, adc_prec=mac.adc_bits, nrow=mac.nrow,
                              tiles=[(s, min(s + mac.nrow, R)) for s in range(0, R, mac.nrow)],
                              trace=trace)  # fmt: skip
        observed = {lv: n.tolist() for lv, n in hists[key].counts.items()}
        assert observed == oracle.mac_histogram(trace, macro.nrow), key
    assert all("_matmul" not in m.__dict__ for _, m in attn)  # the observer restored the layers
    cal = calibrate_adc(sim, [ids(2, 9)], method="max")
    cal.apply(sim)
    for n, m in attn:
        qk, av = cal.layers[n], cal.layers[n + ".av"]
        assert qk.clip_rate == av.clip_rate == 0.0
        assert m.macro.adc_full_scale == qk.full_scale <= macro.nrow
        assert m.av_macro.adc_full_scale == av.full_scale <= macro.nrow
