"""Noise models and exact code sampling (asim/noise.py): code tables equal the spec's
analytic code distribution and a brute-force float64 simulation of the same clamp/round
chain; voting equals the brute-force mode of K draws; histogram noise reproduces its CSV;
bad noise CSVs and configs fail with one-line errors naming the file, line and fix."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from asim import rng
from asim.config import NoiseConfig
from asim.noise import (
    GaussianNoise,
    HistogramNoise,
    TableNoise,
    build_noise,
    code_table,
    sample_codes,
    signed_code_table,
    vote_codes,
)

ROOT = Path(__file__).resolve().parents[2]
TWO32 = 2.0**32


def _ncdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _analytic_pmf(a0: float, mu_off: float, sigma: float, A: int, alpha: float = 0.0):
    """P(code = k) of rne(A * g(clamp(a0 + off + sigma Z, 0, 1))), g(y) = y / (alpha y + 1)
    (g = identity when alpha = 0), written from the spec independently of asim.noise."""
    mu = a0 + mu_off

    def below(t: float) -> float:  # P(g(y) < t)
        b = t / (1 - alpha * t) if alpha * t < 1 else math.inf
        return 1.0 if b > 1 else _ncdf((b - mu) / sigma)

    cdf = [below((k + 0.5) / A) for k in range(A + 1)]
    return [c - (cdf[k - 1] if k else 0.0) for k, c in enumerate(cdf)]


def _f32(x: float) -> float:
    return torch.tensor(x, dtype=torch.float32).item()


def _pmf64(*args) -> torch.Tensor:
    return torch.tensor(_analytic_pmf(*args), dtype=torch.float64)


def _draws(n: int, seed: int, draw: int = 0) -> torch.Tensor:
    keys = rng.element_keys(rng.layer_key(seed, 0), torch.arange(n), 0, 0)
    return rng.draw_u32(keys, draw)


def _hist(codes: torch.Tensor, size: int) -> torch.Tensor:
    return torch.bincount(codes.long().flatten(), minlength=size).double() / codes.numel()


def _tv(p: torch.Tensor, q: torch.Tensor) -> float:
    return 0.5 * float((p - q).abs().sum())


# ----------------------------------------------------------------------------- tables

GAUSSIAN_CASES = {
    # name: (model, F, A, levels, nrow, alpha, late)
    "serial_N1": (GaussianNoise(3.0, 6.0), 8, 15, 1, 8, 0.0, False),  # golden N1's macro
    "parallel_Q11": (GaussianNoise(1.0, 4.0), 3 * 16, 31, 3, 16, 0.0, False),
    "nonlinear_only": (GaussianNoise(0.0, 8.0), 6, 63, 1, 6, 0.0, False),
    "compressed": (GaussianNoise(2.0), 64, 63, 1, 64, 0.03, False),
    "late_compression_Q28": (GaussianNoise(2.0), 64, 63, 1, 64, 0.03, True),
    "fine_adc": (GaussianNoise(0.4), 255, 255, 1, 255, 0.0, False),
}


@pytest.mark.parametrize("name", list(GAUSSIAN_CASES))
def test_gaussian_table_equals_the_analytic_code_distribution(name):
    model, F, A, levels, nrow, alpha, late = GAUSSIAN_CASES[name]
    t = code_table(model, F, A, levels, nrow, alpha, late)
    P = t.probabilities()
    assert t.n_m == F + 1 and P.shape == (F + 1, A + 1)
    assert torch.equal(P.sum(1), torch.ones(F + 1, dtype=torch.float64))  # exactly
    for m in range(F + 1):
        # float32 up to the normalised value, as the spec writes it: a = clamp(fl(M'/F))
        mc = _f32(m)
        if alpha and not late:
            mc = _f32(m / _f32(_f32(m * _f32(alpha)) + 1))
        a0 = min(max(_f32(mc / F), 0.0), 1.0)
        level = _f32(a0 * nrow)  # per-level count (spec Q11)
        sigma = math.sqrt(model.rand_var + model.nl_var / (level + 1))
        want = _pmf64(a0, 0.0, sigma, A, alpha if late else 0.0)
        assert (P[m] - want).abs().max() <= 2.0**-32 + 1e-12, m  # threshold rounding


def test_table_noise_table_uses_offset_and_std_in_lsb():
    model = TableNoise([0, 4, 8], [-0.5, 1.0, 0.25], [0.6, 1.5, 0.0])
    t = code_table(model, 8, 15, 1, 8)
    P = t.probabilities()
    for m, off, std in ((0, -0.5, 0.6), (2, 0.25, 1.05), (4, 1.0, 1.5), (6, 0.625, 0.75)):
        want = _pmf64(m / 8, off / 15, std / 15, 15)  # m / 8 is exact in float32
        assert (P[m] - want).abs().max() <= 2.0**-32 + 1e-12, m
    # std = 0: deterministic code rne(A * clamp(a + offset)) = rne(15 + 0.25) = 15
    assert P[8, 15] == 1.0


def test_tables_are_deterministic_and_cached():
    model = GaussianNoise(0.7, 0.3)
    t1 = code_table(model, 3 * 32, 63, 3, 32, 0.01)
    assert code_table(GaussianNoise(0.7, 0.3), 3 * 32, 63, 3, 32, 0.01) is t1
    from asim import noise

    fresh = noise._build_table(model, 3 * 32, 63, 32, 0.01, False, False)
    assert torch.equal(fresh.thr, t1.thr) and torch.equal(fresh.k_lo, t1.k_lo)
    assert code_table(model, 3 * 32, 63, 3, 32, 0.02) is not t1


def test_reciprocal_division_follows_the_macro_semantics():
    """With no noise at a count whose fl(m/F) sits on a rounding tie, the table's code
    follows MacroConfig.division like the noise-free ADC (spec Q10, golden case S2)."""
    zero = TableNoise([0], [0.0], [0.0])
    F, A = 112, 31
    m = torch.arange(F + 1, dtype=torch.float32)
    for rec in (False, True):
        t = code_table(zero, F, A, 7, 16, reciprocal=rec)
        r = (torch.tensor(1.0) / torch.tensor(float(F))).item()
        a = (m * r if rec else m / F).clamp(0, 1)
        want = (a * A).round().long()
        assert torch.equal(t.probabilities().argmax(1), want)


def test_huge_tables_are_refused_with_a_clear_error():
    with pytest.raises(ValueError, match="exceeds .* thresholds"):
        code_table(GaussianNoise(5.0), 255 * 255, (1 << 20) - 1, 255, 255)
    with pytest.raises(ValueError, match="levels\\*nrow"):
        code_table(GaussianNoise(1.0), 10, 15, 1, 8)


def test_signed_table_is_the_weight_parallel_adc():
    """Spec §8.3: a = clamp(y/F, -1, 1) + N(0, sigma^2), clamped to [-1, 1], q = rne(a H);
    codes stored as q + H for MAC values y in [-F, F]."""
    F, H, sigma = 15 * 7 * 4, 7, 0.03
    t = signed_code_table(GaussianNoise(100 * sigma), F, H)
    P = t.probabilities()
    assert t.m_min == -F and t.n_m == 2 * F + 1 and P.shape == (2 * F + 1, 2 * H + 1)
    assert torch.equal(P.sum(1), torch.ones(2 * F + 1, dtype=torch.float64))
    for y in (-F, -F + 1, -200, -1, 0, 37, 210, F):
        a = _f32(y / F)
        cdf = [
            1.0 if (q + 0.5) / H > 1 else _ncdf(((q + 0.5) / H - a) / sigma)
            for q in range(-H, H + 1)
        ]
        want = [c - (cdf[i - 1] if i else 0.0) for i, c in enumerate(cdf)]
        assert (
            P[y + F] - torch.tensor(want, dtype=torch.float64)
        ).abs().max() <= 2.0**-32 + 1e-12, y
    n = 200_000
    for y in (-F, 0, 150):
        g = torch.Generator().manual_seed(y + F)
        v = (_f32(y / F) + sigma * torch.randn(n, generator=g, dtype=torch.float64)).clamp(-1, 1)
        brute = torch.round(v * H).long() + H
        mine = sample_codes(t, torch.tensor(y), _draws(n, 3 + y))
        assert _tv(_hist(mine, 2 * H + 1), _hist(brute, 2 * H + 1)) < 0.01, y
    with pytest.raises(ValueError, match="random Gaussian noise only"):
        signed_code_table(GaussianNoise(1.0, 1.0), F, H)


# ----------------------------------------------------------------------------- sampling


def _brute_force_codes(a0, off, sigma, A, n, seed, alpha=0.0):
    """The spec chain in float64 with torch's Gaussian generator (independent of the hash)."""
    g = torch.Generator().manual_seed(seed)
    y = (a0 + off + sigma * torch.randn(n, generator=g, dtype=torch.float64)).clamp(0, 1)
    if alpha:
        y = y / (alpha * y + 1)
    return torch.round(y * A).long()


@pytest.mark.parametrize("name", ["serial_N1", "parallel_Q11", "late_compression_Q28"])
def test_sampled_codes_match_a_brute_force_gaussian_simulation(name):
    model, F, A, levels, nrow, alpha, late = GAUSSIAN_CASES[name]
    t = code_table(model, F, A, levels, nrow, alpha, late)
    n = 200_000
    for m in sorted({0, 1, F // 3, F // 2, F - 1, F}):
        a0 = m / F
        sigma = math.sqrt(model.rand_var + model.nl_var / (a0 * nrow + 1))
        brute = _brute_force_codes(a0, 0.0, sigma, A, n, m, alpha if late else 0.0)
        mine = sample_codes(t, torch.tensor(m), _draws(n, 100 + m))
        tv = _tv(_hist(mine, A + 1), _hist(brute, A + 1))
        assert tv < 0.01, (m, tv)  # ~0.003 expected at n = 2e5; sigma 10 % off gives ~0.03


def test_sampled_code_moments_match_the_analytic_model():
    """Golden-case tolerances (|mean - analytic| <= 5 std / sqrt(n), |std/analytic - 1| <=
    0.1), per count, at golden N1's macro (nrow 8, 4-bit ADC, rand 3 %, non-linear 6 %):
    the clamps bias the mean near 0 and full scale (spec Q12)."""
    model, F, A, levels, nrow, *_ = GAUSSIAN_CASES["serial_N1"]
    t = code_table(model, F, A, levels, nrow)
    n = 6000
    for m in range(F + 1):
        sigma = math.sqrt(model.rand_var + model.nl_var / (m + 1))
        p = _pmf64(m / F, 0.0, sigma, A)
        k = torch.arange(A + 1, dtype=torch.float64)
        mean = float(p @ k)
        std = math.sqrt(float(p @ (k * k)) - mean * mean)
        codes = sample_codes(t, torch.tensor(m), _draws(n, m)).double()
        assert abs(float(codes.mean()) - mean) <= 5 * std / math.sqrt(n), m
        assert abs(float(codes.std()) / std - 1) <= 0.1, m
    # the clamp bias of Q12: count 0 has a positive mean code
    assert float(sample_codes(t, torch.tensor(0), _draws(n, 77)).double().mean()) > 0.1


def test_sampled_codes_pass_a_chi_square_test_against_the_table():
    model, F, A, levels, nrow, *_ = GAUSSIAN_CASES["fine_adc"]
    t = code_table(model, F, A, levels, nrow)
    n = 500_000
    P = t.probabilities()
    for m in (0, 100, 255):
        got = _hist(sample_codes(t, torch.tensor(m), _draws(n, 5 + m)), A + 1) * n
        want = P[m] * n
        keep = want > 5
        chi2 = float(((got[keep] - want[keep]) ** 2 / want[keep]).sum())
        dof = int(keep.sum()) - 1
        assert chi2 < dof + 6 * math.sqrt(2 * dof), (m, chi2, dof)


# ----------------------------------------------------------------------------- voting


def _analytic_vote_pmf(p: torch.Tensor, K: int) -> torch.Tensor:
    """P(mode of K i.i.d. codes = k), ties to the smallest, by enumerating all K-tuples."""
    support = [k for k in range(p.numel()) if p[k] > 1e-15]
    out = torch.zeros_like(p)
    for tup in torch.cartesian_prod(*[torch.tensor(support)] * K).view(-1, K).tolist():
        w = math.prod(float(p[k]) for k in tup)
        out[min(tup, key=lambda v: (-tup.count(v), v))] += w
    return out


@pytest.mark.parametrize("K", [2, 3])
def test_voting_matches_the_brute_force_mode_of_k_draws(K):
    model, F, A, levels, nrow, *_ = GAUSSIAN_CASES["serial_N1"]
    t = code_table(model, F, A, levels, nrow)
    n = 100_000
    for m in (0, 3, 8):
        keys = rng.element_keys(rng.layer_key(11, 2), torch.arange(n), m, 0)
        codes = torch.stack(
            [sample_codes(t, torch.tensor(m), rng.draw_u32(keys, k)) for k in range(K)]
        )
        voted = _hist(vote_codes(codes), A + 1)
        sigma = math.sqrt(model.rand_var + model.nl_var / (m + 1))
        brute = torch.stack(
            [_brute_force_codes(m / F, 0, sigma, A, n, 31 * k + m) for k in range(K)]
        )
        assert _tv(voted, _hist(vote_codes(brute), A + 1)) < 0.01, m
        exact = _analytic_vote_pmf(t.probabilities()[m], K)
        assert _tv(voted, exact) < 0.006, m
        if K == 2:  # two different codes tie: the smaller wins, so voting pulls down
            k = torch.arange(A + 1, dtype=torch.float64)
            assert float(exact @ k) < float(t.probabilities()[m] @ k)


# ----------------------------------------------------------------------------- histogram


def _hist_model():
    # counts 0, 4, 8 of a 3-bit ADC on 8 rows; deltas -2..2
    weights = [[0, 2, 6, 2, 0], [1, 1, 4, 3, 1], [0, 0, 5, 4, 1]]
    return HistogramNoise([0, 4, 8], -2, weights), torch.tensor(weights, dtype=torch.float64)


def test_histogram_table_reproduces_the_measured_distribution():
    model, w = _hist_model()
    F, A = 8, 7
    t = code_table(model, F, A, 1, 8)
    P = t.probabilities()
    pmf = w / w.sum(1, keepdim=True)
    ideal = [round(m * A / F) for m in range(F + 1)]  # rne; no .5 ties at these counts
    assert ideal[4] == 4 and ideal[8] == 7
    # count 4: no clamping, the CSV's histogram exactly (to 2^-32)
    assert (P[4, 2:7] - pmf[1]).abs().max() < 2**-31
    # count 8: ideal 7, deltas > 0 pile up on code 7, deltas <= 0 stay
    assert abs(float(P[8, 7]) - float(pmf[2, 2:].sum())) < 2**-31
    # count 0: negative deltas clamp to code 0
    assert abs(float(P[0, 0]) - float(pmf[0, :3].sum())) < 2**-31
    # count 2: the halfway mix of the histograms at 0 and 4, around ideal code 2
    mix = 0.5 * pmf[0] + 0.5 * pmf[1]
    k0 = ideal[2]
    assert (P[2, k0 - 2 : k0 + 3] - mix).abs().max() < 2**-31
    # and sampling reproduces it
    n = 400_000
    got = _hist(sample_codes(t, torch.tensor(4), _draws(n, 9)), A + 1)
    assert _tv(got[2:7], pmf[1]) < 0.005


def test_histogram_with_late_compression_compresses_the_measured_code():
    """Q28's ``normalised`` sign cycle: the code drawn from the histogram is compressed as
    the value ``y = code / A``: ``rne(A * y / (alpha * y + 1))``."""
    model, w = _hist_model()
    alpha, A = 0.3, 7
    plain = code_table(model, 8, A, 1, 8).probabilities()
    late = code_table(model, 8, A, 1, 8, alpha, late_compression=True).probabilities()
    remap = [round(A * (k / A) / (alpha * k / A + 1)) for k in range(A + 1)]
    want = torch.zeros_like(plain)
    for k in range(A + 1):
        want[:, remap[k]] += plain[:, k]
    assert (late - want).abs().max() < 2**-31
    assert late[8, 7] == 0  # the top code is out of reach after compression


def test_histogram_moments_are_the_histogram_mean_and_std():
    model, w = _hist_model()
    d = torch.arange(-2, 3, dtype=torch.float64)
    p = w[1] / w[1].sum()
    off, sd = model.moments(torch.tensor([4.0]), 7)
    mean = float(p @ d)
    assert off.dtype == torch.float32
    assert float(off) == pytest.approx(mean / 7, rel=1e-6)
    assert float(sd) == pytest.approx(math.sqrt(float(p @ (d * d)) - mean**2) / 7, rel=1e-6)


def test_shipped_histogram_preset_loads_and_samples():
    from omegaconf import OmegaConf

    preset = OmegaConf.to_container(OmegaConf.load(ROOT / "conf/noise/histogram.yaml"))
    preset.pop("defaults", None)  # the schema line, if the preset has one
    cfg = NoiseConfig(**{k: str(ROOT / v) for k, v in preset.items()})
    model = build_noise(cfg)
    assert isinstance(model, HistogramNoise) and cfg.enabled
    t = code_table(model, 255, 255, 1, 255)
    P = t.probabilities()
    assert torch.equal(P.sum(1), torch.ones(256, dtype=torch.float64))
    assert float(P[128, 128:].sum()) > float(P[128, :128].sum())  # the bowed INL: offset > 0


# ----------------------------------------------------------------------------- CSV input

HEADER_T = "count,offset,std"
HEADER_H = "count,delta,weight"


def _write(tmp_path, text: str) -> Path:
    p = tmp_path / "noise.csv"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "body,match",
    [
        ("count,mean,std\n0,0,1\n", "line 2: header .* lacks offset; the header must be"),
        ("count,offset,std\n0,0,1\n8,0,1\n4,0,1\n", "line 5: count 4 follows 8; sort"),
        ("count,offset,std\n0,0,1\n0,0,1\n", "line 4: count 0 follows 0"),
        ("count,offset,std\n0,0,-0.1\n", "line 3: std=-0.1 is negative; std must be >= 0"),
        (
            "count,offset,std\n0,0,nan\n",
            "line 3: std='nan' is not a finite number; write the measured",
        ),
        ("count,offset,std\n0,inf,1\n", "line 3: offset='inf' is not a finite number"),
        (
            "count,offset,std\n0,abc,1\n",
            "line 3: offset='abc' is not a number; write a plain decimal",
        ),
        ("count,offset,std\n0,0\n", "line 3: 2 fields, the header has 3"),
        ("count,offset,std\n", "no data rows after the header"),
        ("# only a comment\n", "no header"),
    ],
)
def test_bad_noise_tables_fail_with_one_line_errors(tmp_path, body, match):
    p = _write(tmp_path, "# comment line\n" + body)
    with pytest.raises(ValueError, match=match) as err:
        TableNoise.from_csv(p)
    assert "\n" not in str(err.value) and str(p) in str(err.value)


@pytest.mark.parametrize(
    "body,match",
    [
        ("count,delta,freq\n0,0,1\n", "lacks weight; the header must be count,delta,weight"),
        ("count,delta,weight\n4,0,1\n0,0,1\n", "line 4: .*count 0, delta 0.* follows .*sort"),
        ("count,delta,weight\n0,1,1\n0,0,1\n", "line 4: .*delta 0.* follows .*delta 1"),
        ("count,delta,weight\n0,0.5,1\n", "line 3: delta=0.5 must be a whole number"),
        ("count,delta,weight\n0,0,-1\n", "line 3: weight=-1 is negative; weight must be >= 0"),
        ("count,delta,weight\n0,0,nan\n", "line 3: weight='nan' is not a finite number"),
        ("count,delta,weight\n0,x,1\n", "line 3: delta='x' is not a number"),
        ("count,delta,weight\n0,0,0\n1,0,1\n", "count 0 has no positive weight"),
    ],
)
def test_bad_histograms_fail_with_one_line_errors(tmp_path, body, match):
    p = _write(tmp_path, "# comment line\n" + body)
    with pytest.raises(ValueError, match=match) as err:
        HistogramNoise.from_csv(p)
    assert "\n" not in str(err.value) and str(p) in str(err.value)


def test_missing_files_name_the_option(tmp_path):
    with pytest.raises(FileNotFoundError, match="noise.file=PATH"):
        TableNoise.from_csv(tmp_path / "nope.csv")
    with pytest.raises(FileNotFoundError, match="noise.histogram=PATH"):
        HistogramNoise.from_csv(tmp_path / "nope.csv")


def test_good_csvs_load(tmp_path):
    t = TableNoise.from_csv(_write(tmp_path, "count, offset, std\n0,0.1,0.5\n# c\n8,-0.2,1\n"))
    assert t.counts.tolist() == [0, 8] and t.std.tolist() == [0.5, 1.0]
    excel = tmp_path / "excel.csv"  # a spreadsheet export: byte-order mark, CRLF
    excel.write_bytes(b"\xef\xbb\xbfcount,offset,std\r\n0,0.1,0.5\r\n")
    assert TableNoise.from_csv(excel).std.tolist() == [0.5]
    shipped = TableNoise.from_csv(ROOT / "conf/noise/measured_example.csv")
    assert shipped.counts.numel() == 16


def test_a_layer_rereads_an_edited_noise_file(tmp_path):
    """Editing the measured-noise file between two calls of one layer changes its noise:
    the layer's compiled program follows the file's version, as a fresh layer does."""
    import os

    from asim import ACiMLinear, MacroConfig, resample_noise

    path = tmp_path / "measured.csv"

    def measured(std: float, mtime_ns: int) -> NoiseConfig:
        path.write_text(f"count,offset,std\n0,0,{std}\n15,0.5,{std}\n")
        os.utime(path, ns=(mtime_ns, mtime_ns))  # a new version even within one clock tick
        return NoiseConfig(file=str(path))

    def layer_out(layer, x):
        resample_noise(layer, 0)
        with torch.no_grad():
            return layer(x)

    macro = MacroConfig(nrow=15, adc_bits=4)
    x = torch.relu(torch.randn(6, 40, generator=torch.Generator().manual_seed(0)))
    torch.manual_seed(0)
    layer = ACiMLinear(40, 7, macro=macro, noise=measured(0.2, 10**18), signed_input=False)
    before = layer_out(layer, x)
    assert torch.equal(layer_out(layer, x), before)  # same file, same noise index
    measured(3.0, 2 * 10**18)
    after = layer_out(layer, x)
    torch.manual_seed(0)
    fresh = ACiMLinear(40, 7, macro=macro, noise=NoiseConfig(file=str(path)), signed_input=False)
    assert not torch.equal(after, before)
    assert torch.equal(after, layer_out(fresh, x))


def test_table_noise_constructor_rejects_nan_std():
    with pytest.raises(ValueError, match="std must be finite and >= 0"):
        TableNoise([0, 1], [0, 0], [0.5, float("nan")])


# ----------------------------------------------------------------------------- config


def test_noise_config_histogram_field():
    assert not NoiseConfig().enabled
    cfg = NoiseConfig(histogram="conf/noise/histogram_example.csv")
    assert cfg.enabled
    with pytest.raises(ValueError, match="set only one of noise.file .* and noise.histogram"):
        NoiseConfig(file="a.csv", histogram="b.csv")
    with pytest.raises(ValueError, match="histogram replaces the Gaussian noise; set noise.rand"):
        NoiseConfig(histogram="b.csv", rand_sigma=0.4)
    with pytest.raises(ValueError, match="must be null or a path"):
        NoiseConfig(histogram="")
    assert NoiseConfig(histogram=Path("x.csv")).histogram == "x.csv"


# ----------------------------------------------------------------------------- LSB units


def _probs(noise: NoiseConfig, macro) -> torch.Tensor:
    """``P(code | count)`` of a bit-serial cycle of ``macro`` with ``noise`` (its plan)."""
    from asim.engine import build_plan

    return build_plan(macro, noise, False).code_table(0).probabilities()


@pytest.mark.parametrize("adc_bits", [5, 8])
def test_lsb_and_percent_forms_give_the_same_noise(adc_bits):
    from asim import MacroConfig, acim_matmul
    from asim.engine import NoiseStream

    macro = MacroConfig(weight_bits=3, input_bits=3, nrow=31, adc_bits=adc_bits)
    A = macro.adc_levels
    lsb = NoiseConfig(rand_sigma_lsb=1.5, nonlinear_sigma_lsb=0.5)
    pct = NoiseConfig(rand_sigma=1.5 * 100 / A, nonlinear_sigma=0.5 * 100 / A)
    assert build_noise(lsb, macro).cache_key() == build_noise(pct, macro).cache_key()
    assert torch.equal(_probs(lsb, macro), _probs(pct, macro))
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 8, (4, 40), generator=g).float()
    w = torch.randint(-3, 4, (40, 5), generator=g).float()
    stream = NoiseStream(123, torch.arange(4), 1)
    y = [
        acim_matmul(x, w, macro=macro, signed_input=False, noise=n, stream=stream)
        for n in (lsb, pct)
    ]
    assert torch.equal(y[0], y[1])
    assert lsb.at_adc(8).rand_sigma == pytest.approx(100 * 1.5 / 255)  # 1 LSB = 0.392 % at 8


def test_lsb_fields_refuse_the_percent_ones_and_a_missing_macro():
    with pytest.raises(ValueError, match="^NoiseConfig: state the Gaussian noise in one unit"):
        NoiseConfig(rand_sigma=0.4, nonlinear_sigma_lsb=1)
    with pytest.raises(ValueError, match="histogram replaces the Gaussian noise"):
        NoiseConfig(histogram="h.csv", rand_sigma_lsb=1)
    with pytest.raises(ValueError, match="pass the macro"):
        build_noise(NoiseConfig(rand_sigma_lsb=1))
    assert NoiseConfig(nonlinear_sigma_lsb=0.5).enabled


TABLE_AT_8 = "# operating_point: adc_bits=8, nrow=255\ncount,offset,std\n0,0.8,2.0\n255,0.8,2.0\n"


def test_table_measured_at_adc_8_used_at_adc_5(tmp_path):
    from asim import MacroConfig

    stated = TableNoise.from_csv(_write(tmp_path, TABLE_AT_8))
    assert stated.operating_point.adc_bits == 8 and stated.operating_point.nrow == 255
    level = torch.tensor([10.0])
    for bits in (5, 8):
        A = (1 << bits) - 1
        off, sigma = stated.moments64(level, A)
        assert float(sigma) == pytest.approx(2.0 / 255)  # the same % of full scale
        assert float(sigma) * A == pytest.approx(2.0 * A / 255)  # in the layer's LSB
        assert float(off) == pytest.approx(0.8 / 255)
    at5 = float(stated.moments64(level, 31)[1]) * 31  # sigma in 5-bit LSB
    assert at5 == pytest.approx(2.0 / (255 / 31)) and 2.0 / at5 == pytest.approx(255 / 31)
    # the same file without its operating point: the 2 LSB are taken at 5 bits, 8x larger
    (tmp_path / "plain").mkdir()
    plain = _write(tmp_path / "plain", TABLE_AT_8.split("\n", 1)[1])
    with pytest.warns(UserWarning, match="states no operating point: its LSB are taken as LSB"):
        bare = TableNoise.from_csv(plain)
    assert float(bare.moments64(level, 31)[1]) == pytest.approx(2.0 / 31)
    # the engine's code table follows: same distribution at 8 bits as the bare file
    macro8 = MacroConfig(weight_bits=3, input_bits=3, nrow=255, adc_bits=8)
    p_stated = _probs(NoiseConfig(file=str(tmp_path / "noise.csv")), macro8)
    assert torch.equal(p_stated, _probs(NoiseConfig(file=str(plain)), macro8))


def test_histogram_measured_at_adc_8_converts_physically(tmp_path):
    from asim import MacroConfig

    text = "# operating_point: adc_bits=8\ncount,delta,weight\n0,-8,1\n0,0,2\n0,8,1\n"
    stated = HistogramNoise.from_csv(_write(tmp_path, text))
    (tmp_path / "plain").mkdir()
    with pytest.warns(UserWarning, match="states no operating point"):
        bare = HistogramNoise.from_csv(_write(tmp_path / "plain", text.split("\n", 1)[1]))
    # at its own resolution: bit-identical to today's (the unconverted) table
    assert torch.equal(
        code_table(stated, 255, 255, 1, 255).probabilities(),
        code_table(bare, 255, 255, 1, 255).probabilities(),
    )
    # at 5 bits: the offset of +-8 LSB at 8 bits is +-8 * 31 / 255 = +-0.97 LSB at 5 bits
    F, A = 31, 31
    p = code_table(stated, F, A, 1, F).probabilities()
    a = torch.arange(F + 1, dtype=torch.float32) / F
    want = torch.zeros(F + 1, A + 1, dtype=torch.float64)
    for d, prob in ((-8, 0.25), (0, 0.5), (8, 0.25)):
        code = torch.round(a.double() * A + d * A / 255).long().clamp(0, A)
        want[torch.arange(F + 1), code] += prob
    assert torch.allclose(p, want, atol=1e-9)
    assert float(p[10, 10]) == pytest.approx(0.5, abs=1e-9)  # not +-8 codes as the bare file
    assert float(code_table(bare, F, A, 1, F).probabilities()[10, 10]) == pytest.approx(0.5)
    assert float(code_table(bare, F, A, 1, F).probabilities()[10, 18]) == pytest.approx(0.25)
    macro = MacroConfig(weight_bits=3, input_bits=3, nrow=31, adc_bits=5)
    assert torch.equal(_probs(NoiseConfig(histogram=str(tmp_path / "noise.csv")), macro), p)


def test_measurement_beyond_its_counts_is_refused(tmp_path):
    from asim import MacroConfig
    from asim.engine import build_plan

    path = _write(tmp_path, TABLE_AT_8)
    noise = NoiseConfig(file=str(path))
    build_noise(noise, MacroConfig(nrow=128))  # fewer rows: covered
    with pytest.raises(ValueError, match=r"measured at nrow=255, it does not cover .*nrow=511"):
        build_plan(MacroConfig(nrow=511, adc_bits=9), noise, False)


@pytest.mark.parametrize(
    "line,match",
    [
        ("# operating_point: adc_bits=eight", "'adc_bits=eight' in the operating point"),
        ("# operating_point: bits=8", "'bits=8' in the operating point"),
        ("# Operating point:", "an empty operating point"),
    ],
)
def test_bad_operating_point_lines_fail_in_one_line(tmp_path, line, match):
    path = _write(tmp_path, f"{line}\ncount,offset,std\n0,0,1\n")
    with pytest.raises(ValueError, match=match) as err:
        TableNoise.from_csv(path)
    assert "line 1" in str(err.value) and "\n" not in str(err.value)


def test_shipped_measurements_state_their_operating_point():
    from asim.noise import OperatingPoint

    for name in ("measured_example.csv", "histogram_example.csv"):
        loader = TableNoise if name.startswith("measured") else HistogramNoise
        model = loader.from_csv(ROOT / "conf" / "noise" / name)
        assert model.operating_point == OperatingPoint(adc_bits=8, nrow=255)
