"""What a macro costs: operation counts and energy per sample, from layer shapes (spec §12).

The model describes the *macro*, not the simulation: counts come from the layer shapes, the
tiling (spec §3) and the cycle plan (§4-§8), never from the engine's shortcuts, so a lossless
run and a lossy one with the same shapes report the same counts. Per ACiM layer and per sample:

* ``adc_conversions``: one per (tile, weight bit, analog cycle, output element); ``K`` per
  voted cycle (majority voting, §8.2); none for hybrid digital cycles (§6). The weight-parallel
  mode (§8.3) converts once per output element (``weight_parallel_adc="output"``) or once per
  (tile, weight bit, cycle, output) (``"per_cycle"``).
* ``digital_partial_sums``: hybrid MSB cycles computed digitally, per (tile, weight bit, cycle,
  output element).
* ``array_cycles``: array activations, one per (tile, input cycle, input vector); a cycle with
  voted conversions is evaluated ``K`` times. All output columns of a tile (outputs x weight
  bits) compute in the same activation.
* ``binary_macs``: 1-bit products in the cells: weight bits x input bits x mapped rows x outputs
  (x ``K`` in voted cycles). Channels dropped by the reference tiling (Q1) are not mapped.
* ``row_activations``: input-driver pulses, one per mapped row per array activation.
* ``shift_adds``: digital shift-and-add of one partial sum (converted or hybrid-digital);
  none in the weight-parallel ``output`` mode, whose sum is formed before its one conversion.
* ``digital_macs``: MACs of always-digital layers (``digital=True``, the reference's
  ``QuantConv2d`` first layer); the other fields are 0 for them.

Energy (``energy_pj``, ``energy_breakdown_pj``) applies the per-operation energies of a
:class:`CostConfig`; the default is ZigZag-IMC's 28 nm charge-domain AIMC model with digital
adds from Horowitz (ISSCC 2014). The terms (:data:`ENERGY_KEYS`): ``adc`` conversions x the
energy of one ``adc_bits`` conversion; ``array`` analog column evaluations (the conversions;
every weight bit, tile and cycle in the weight-parallel mode) x ``nrow`` cells x the bit-line
energy; ``input`` mapped rows x array activations x input bits of the cycle x the driver
energy; ``hybrid`` digital partial sums x ``nrow`` x the adder-tree energy per row;
``shift_add``; ``vote`` voted partial sums x K(K-1)/2 comparisons; ``digital`` digital MACs.
Only the macro is modelled: no weight loading, no buffers or off-macro data movement, no float
layers left outside the macro. Published models spread about 10x, so compare designs with one
preset rather than quoting absolute numbers.

Plain PyTorch::

    from asim import CostConfig, estimate_cost
    report = estimate_cost(acim_model, example_batch)        # one cheap forward
    report.totals["energy_pj"], report.to_dict()["cost_layers"]
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .config import MacroConfig
from .engine import (
    activation_cycles,
    compile_program,  # the engine's compiled program: what the macro runs
    linear_tiles,
)
from .engine import build_plan as _build_plan  # noqa: F401 (test_cost checks it is importable)
from .engine.plan import DIGITAL as _DIGITAL
from .engine.plan import VOTED_ANALOG as _VOTED_ANALOG
from .layers import ACiMConv2d, ACiMLayer, ACiMLinear, ACiMMultiheadAttention
from .layers.conv import conv_tiles

_POSITIVE = ("vdd", "columns", "columns_per_adc", "macros")
"""CostConfig fields that must be > 0 (the others >= 0)."""

__all__ = [
    "COUNT_FIELDS",
    "ENERGY_KEYS",
    "PERFORMANCE_FIELDS",
    "CostConfig",
    "CostRecorder",
    "CostReport",
    "estimate_cost",
]

COUNT_FIELDS = (
    "adc_conversions",
    "digital_partial_sums",
    "array_cycles",
    "binary_macs",
    "row_activations",
    "shift_adds",
    "digital_macs",
    "cim_write_bits",
)
"""Operation counts reported per sample, for every layer and in total."""

PERFORMANCE_FIELDS = ("macs", "latency_ns", "throughput_fps", "area_mm2", "tops_per_w")
"""Per entry beside the counts and energy: ``macs`` (multi-bit MACs per sample, digital
layers included), ``latency_ns`` (macro time per sample, a full-utilization lower bound),
``throughput_fps`` (1e9 / latency_ns: samples per second, one at a time), ``area_mm2`` (the
macros used: cells and ADCs, ``CostConfig.macros`` copies) and ``tops_per_w`` (2 ops per MAC
over the energy: ops per pJ = TOPS/W). See :class:`CostConfig` for the formulas' sources."""

ENERGY_KEYS = ("adc", "array", "input", "hybrid", "shift_add", "vote", "digital", "write")
"""Keys of ``energy_breakdown_pj``: ADC conversions, bit-line evaluation of the cells, input
drivers, hybrid digital partial sums, shift-and-add, majority-vote logic, digital layers, bits
written into the array at run time (a language model's KV cache)."""


@dataclass
class CostConfig:
    """Per-operation energies of the cost model (the ``cost`` config group's schema).

    Analog terms are capacitances switched at ``vdd`` (energy = C * VDD^2; 1 fF at 1 V is
    1 fJ); digital terms are energies in pJ. Defaults: ZigZag-IMC's AIMC model at 28 nm
    (KULeuven-MICAS/zigzag-imc, ``AimcArray``/``ImcUnit.TECH_PARAM_28NM``) and Horowitz,
    "Computing's energy problem", ISSCC 2014 (45 nm) for digital arithmetic.
    """

    name: str = "zigzag_28nm"
    """Label of the energy set, shown in reports."""
    vdd: float = 0.9
    """Supply voltage in V (ZigZag-IMC 28 nm: 0.9 V)."""
    adc_linear_fF: float = 100.0
    """ADC energy, linear term: fF * VDD^2 per conversion per ADC bit. A B-bit conversion
    costs ``(adc_linear_fF * B + adc_exponential_fF * 4^B) * VDD^2`` (ZigZag-IMC: 100 fF)."""
    adc_exponential_fF: float = 0.001
    """ADC energy, exponential term: fF * VDD^2 per conversion per 4^B (ZigZag-IMC: 0.001 fF)."""
    input_fF_per_bit: float = 50.0
    """Input driver (DAC) energy: fF * VDD^2 per mapped row per array activation per input bit
    applied in that cycle (ZigZag-IMC: 50 fF per bit)."""
    binary_input_driver: bool = True
    """Whether 1-bit input cycles pay ``input_fF_per_bit`` too. False follows ZigZag-IMC, whose
    DAC costs nothing at 1 bit per cycle (a plain word-line pulse)."""
    bitline_fF: float = 0.35
    """Bit-line energy: fF * VDD^2 per cell of a column (``nrow`` cells) per analog evaluation of
    one weight bit's column (ZigZag-IMC: half a 28 nm NAND2 input, 0.35 fF)."""
    shift_add_pj: float = 0.1
    """Digital shift-and-add of one partial sum into its output, pJ (Horowitz: 32-bit integer
    add, 0.1 pJ at 45 nm)."""
    hybrid_pj_per_row: float = 0.0075
    """Digital partial sum of a hybrid cycle, pJ per row of the column (``nrow`` rows): a
    popcount adder tree of about 2 one-bit full adders per row, each 1/8 of Horowitz's 8-bit
    add (0.03 pJ)."""
    vote_pj_per_compare: float = 0.03
    """Majority vote of K codes: K(K-1)/2 code comparisons per voted partial sum, pJ each
    (Horowitz: 8-bit add, 0.03 pJ)."""
    digital_mac_pj: float = 0.3
    """One MAC of an always-digital layer, pJ (Horowitz: 8-bit multiply 0.2 pJ + 32-bit add
    0.1 pJ)."""
    cim_write_fF_per_row: float = 0.35
    """Writing one bit into the array (a language model's KV cache, written per token):
    fF * VDD^2 per row of the column, i.e. ``nrow * cim_write_fF_per_row * VDD^2`` per bit, the
    full-rail swing of one bit line of ``nrow`` cells (ZigZag-IMC bl_cap, 0.35 fF per cell: 72 fJ
    per bit at nrow 255 and 0.9 V; word line and write driver neglected)."""
    # --- latency and area (asim.cost.latency_ns / macro_area_mm2; docs/cost.md) ---
    adc_ns_per_bit_row: float = 0.00653
    """ADC delay, row term: a B-bit conversion of a column of ``nrow`` rows takes
    ``B * (adc_ns_per_bit_row * nrow + adc_ns_per_bit)`` ns (ZigZag-IMC ``AimcArray.
    get_adc_cost``, k3 = 0.00653 ns, fitted on 28 nm AIMC papers)."""
    adc_ns_per_bit: float = 0.640
    """ADC delay, constant term per bit, ns (ZigZag-IMC k4 = 0.640 ns)."""
    cycle_overhead_ns: float = 0.0478
    """Delay of one array evaluation besides the ADC, ns: ZigZag-IMC's 1-bit multiplier (a
    28 nm NAND2, 0.0478 ns) on the clock path (DAC delay neglected there too)."""
    adc_area_um2_log: float = 1.206
    """ADC area: ``10^(adc_area_um2_log - adc_area_decay_per_bit * B) * 2^B`` um^2 per B-bit
    ADC (ZigZag-IMC k2 = 1.206; 8 bits: 2.7e-3 mm^2); a 1-bit ADC (sense amplifier) is free."""
    adc_area_decay_per_bit: float = 0.0369
    """ADC area exponent per bit (ZigZag-IMC k1 = -0.0369, here without the sign)."""
    cell_area_um2: float = 0.614
    """Area per cell of a column, um^2: ZigZag-IMC's 1-bit multiplier (one 28 nm NAND2,
    0.614 um^2); like ZigZag-IMC, the SRAM storage itself is not counted."""
    columns: float = 256
    """Columns of one macro (weight-bit columns read out in the same array evaluation):
    an assumption, not a property of the simulated arithmetic."""
    columns_per_adc: float = 1
    """Columns sharing one ADC (1: an ADC per column, as ZigZag-IMC's AIMC; 8: a column mux)."""
    macros: float = 1
    """Macros working in parallel on one sample (area scales with it, latency divides by it)."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise ValueError(f"CostConfig.name={self.name!r} must be a string")
        if not isinstance(self.binary_input_driver, bool):
            raise ValueError(
                f"CostConfig.binary_input_driver={self.binary_input_driver!r} must be true or false"
            )
        for f in dataclasses.fields(self):
            if f.name in ("name", "binary_input_driver"):
                continue
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"CostConfig.{f.name}={value!r} must be a number")
            if f.name in _POSITIVE and not (math.isfinite(value) and value > 0):
                what = "voltage" if f.name == "vdd" else "number"
                raise ValueError(f"CostConfig.{f.name}={value} must be a finite {what} > 0")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"CostConfig.{f.name}={value} must be a finite number >= 0")
            setattr(self, f.name, float(value))

    def adc_pj(self, bits: int) -> float:
        """Energy of one ``bits``-bit conversion, pJ."""
        return self._fF_pj(self.adc_linear_fF * bits + self.adc_exponential_fF * 4.0**bits)

    def _fF_pj(self, farads_f: float) -> float:
        """fF switched at VDD -> pJ (fF * V^2 = fJ)."""
        return farads_f * self.vdd**2 / 1000.0

    def adc_ns(self, bits: int, nrow: int) -> float:
        """Delay of one ``bits``-bit conversion of an ``nrow``-row column, ns (ZigZag-IMC)."""
        return bits * (self.adc_ns_per_bit_row * nrow + self.adc_ns_per_bit)

    def adc_area_mm2(self, bits: int) -> float:
        """Area of one ``bits``-bit ADC, mm^2 (ZigZag-IMC's fit; 0 for a 1-bit sense amp)."""
        if bits <= 1:
            return 0.0
        return (
            10.0 ** (self.adc_area_um2_log - self.adc_area_decay_per_bit * bits) * 2.0**bits / 1e6
        )

    def adcs(self) -> float:
        """ADCs working at once: ``columns / columns_per_adc`` per macro, times ``macros``."""
        return self.columns / self.columns_per_adc * self.macros

    def macro_area_mm2(self, macro: MacroConfig) -> float:
        """Area of ``macros`` copies of one macro, mm^2: ``nrow x columns`` cells and its
        ADCs (digital periphery, buffers and the SRAM storage are not counted)."""
        cells = macro.nrow * self.columns * self.cell_area_um2 / 1e6
        adcs = self.columns / self.columns_per_adc * self.adc_area_mm2(macro.adc_bits)
        return (cells + adcs) * self.macros

    def replace(self, **changes) -> CostConfig:
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)


# ------------------------------------------------------------------------------ counting
@dataclass
class _Tally:
    """Counts and energies of one layer, summed over every call (not yet per sample)."""

    counts: dict[str, int] = dataclasses.field(
        default_factory=lambda: dict.fromkeys(COUNT_FIELDS, 0)
    )
    energy: dict[str, float] = dataclasses.field(
        default_factory=lambda: dict.fromkeys(ENERGY_KEYS, 0.0)
    )

    timing: dict[str, float] = dataclasses.field(
        default_factory=lambda: {"macs": 0, "latency_ns": 0.0}
    )
    """MACs (for TOPS/W) and the macro time of the counted calls (:func:`_timing`)."""
    macros: dict[str, MacroConfig] = dataclasses.field(default_factory=dict)
    """The distinct macros the counted calls used, by ``describe()`` (each is its own
    hardware: area)."""

    def add(self, other: _Tally) -> None:
        for k, v in other.counts.items():
            self.counts[k] += v
        for k, v in other.energy.items():
            self.energy[k] += v
        for k, v in other.timing.items():
            self.timing[k] += v
        self.macros.update(other.macros)


def _pair_kinds(macro: MacroConfig, signed: bool):
    """Cycles and, per (weight bit i, cycle c): whether it is converted by the ADC, whether it
    is voted and whether it is a hybrid digital cycle. A hybrid cycle with
    ``hybrid_exact=False`` is both (quirk Q4: the reference still passes it through the ADC,
    so the cost model charges the conversion it simulates)."""
    plan = compile_program(macro, None, signed, (), 1).plan  # the program's design kinds
    digital = [[k == _DIGITAL for k in row] for row in plan.kind]
    converted = [[k != _DIGITAL or not macro.hybrid_exact for k in row] for row in plan.kind]
    voted = [[k == _VOTED_ANALOG for k in row] for row in plan.kind]
    return plan.cycles, converted, voted, digital


def _spec_kinds(macro: MacroConfig, signed: bool):
    """Spec §6/§8.2 directly: digital iff the anti-diagonal distance ``d`` from the MSB x MSB
    corner is < hybrid_levels, converted unless it is digital and ``hybrid_exact`` (Q4); voted
    iff ``d < vote_levels`` (used where the engine's plan is not importable; a test checks
    that both agree)."""
    cycles = activation_cycles(macro.input_bits, macro.input_enc_bits, signed)
    w, n = macro.weight_bits, len(cycles)
    d = [[(w - 1 - i) + (n - 1 - c) for c in range(n)] for i in range(w)]
    digital = [[x < macro.hybrid_levels for x in row] for row in d]
    converted = [[not (dig and macro.hybrid_exact) for dig in row] for row in digital]
    voted = [
        [x < macro.vote_levels and macro.vote_samples > 1 and x >= macro.hybrid_levels for x in row]
        for row in d
    ]
    return cycles, converted, voted, digital


def _matmul_tally(
    rows: int,
    outputs: int,
    tiles: Sequence[tuple[int, int]],
    macro: MacroConfig,
    signed: bool,
    cost: CostConfig,
) -> _Tally:
    """One ``X [rows, R] @ W [R, outputs]`` on ``macro`` with the reduction tiled as ``tiles``:
    the operations the engine's compiled program runs (:meth:`Program.operations`)."""
    ops = compile_program(macro, None, signed, tiles, outputs).operations(rows)
    K = macro.vote_samples
    mapped, reps, widths = ops.mapped_rows, ops.cycle_repeats, ops.cycle_widths
    evals, voted_sums = ops.evaluations, ops.voted_sums
    outs = rows * outputs
    t = _Tally()
    counts = t.counts
    for name in (
        "adc_conversions", "digital_partial_sums", "shift_adds", "array_cycles",
        "row_activations", "binary_macs",
    ):  # fmt: skip
        counts[name] = getattr(ops, name)
    driven_bits = sum(
        r * b for r, b in zip(reps, widths, strict=True) if b > 1 or cost.binary_input_driver
    )
    e = t.energy
    e["adc"] = counts["adc_conversions"] * cost.adc_pj(macro.adc_bits)
    e["array"] = evals * macro.nrow * cost._fF_pj(cost.bitline_fF)
    e["input"] = mapped * rows * driven_bits * cost._fF_pj(cost.input_fF_per_bit)
    e["hybrid"] = counts["digital_partial_sums"] * macro.nrow * cost.hybrid_pj_per_row
    e["shift_add"] = counts["shift_adds"] * cost.shift_add_pj
    e["vote"] = voted_sums * (K * (K - 1) // 2) * cost.vote_pj_per_compare
    _timing(t, mapped * outs, macro, cost)
    return t


def _timing(t: _Tally, macs: int, macro: MacroConfig, cost: CostConfig) -> None:
    """MACs, the macro and the time of one matmul on it: its conversions spread over every
    ADC working at once (:meth:`CostConfig.adcs`), each taking the ADC delay of ``macro`` plus
    ``cycle_overhead_ns``. A lower bound at full utilization: the digital work (shift-add,
    hybrid sums, votes) is pipelined behind the conversions; no weight loading, no data
    movement outside the macro."""
    per_conversion = cost.adc_ns(macro.adc_bits, macro.nrow) + cost.cycle_overhead_ns
    t.timing["macs"] += macs
    t.timing["latency_ns"] += t.counts["adc_conversions"] * per_conversion / cost.adcs()
    t.macros[macro.describe()] = macro


def write_tally(bits: int, macro: MacroConfig, cost: CostConfig) -> _Tally:
    """``bits`` written into an array of ``macro`` at run time (KV-cache writes)."""
    t = _Tally()
    t.counts["cim_write_bits"] = bits
    t.energy["write"] = bits * macro.nrow * cost._fF_pj(cost.cim_write_fF_per_row)
    return t


def _digital_tally(macs: int, cost: CostConfig) -> _Tally:
    t = _Tally()
    t.counts["digital_macs"] = macs
    t.energy["digital"] = macs * cost.digital_mac_pj
    t.timing["macs"] += macs  # digital logic beside the macro: no macro time, no macro area
    return t


def _arg(args: tuple, kwargs: dict, index: int, name: str):
    if len(args) > index:
        return args[index]
    return kwargs.get(name)


def _conv_tallies(layer: ACiMConv2d, args, kwargs, output: Tensor, cost: CostConfig):
    kh, kw = layer.kernel_size
    C, O = layer.in_channels, layer.out_channels
    rows = output.numel() // O  # images x output positions
    if layer.digital:
        return [("", _digital_tally(rows * O * (C // layer.groups) * kh * kw, cost))]
    tiles, _ = conv_tiles(C, kh * kw, layer.macro.nrow, layer.macro.conv_tiling)
    return [("", _matmul_tally(rows, O, tiles, layer.macro, layer.signed_input, cost))]


def _linear_tallies(layer: ACiMLinear, args, kwargs, output: Tensor, cost: CostConfig):
    x = _arg(args, kwargs, 0, "input")
    R, O = layer.in_features, layer.out_features
    rows = x.numel() // R
    if layer.digital:
        return [("", _digital_tally(rows * R * O, cost))]
    tiles = linear_tiles(R, layer.macro.nrow)
    return [("", _matmul_tally(rows, O, tiles, layer.macro, layer.signed_input, cost))]


def _attention_tallies(layer: ACiMMultiheadAttention, args, kwargs, output, cost: CostConfig):
    """The qkv projection, QK^T and AV of one call (spec §7.2); ``out_proj`` is its own layer."""
    query = _arg(args, kwargs, 0, "query")
    key = _arg(args, kwargs, 1, "key")
    value = _arg(args, kwargs, 2, "value")
    key = query if key is None else key  # the forward's self-attention defaults
    value = key if value is None else value
    C, H = layer.embed_dim, layer.num_heads
    d = C // H
    tok = 1 if layer.batch_first else 0  # token dimension
    B, Nq, Nk = query.shape[1 - tok], query.shape[tok], key.shape[tok]
    macro = layer.macro
    if query is key and key is value:
        projections = [(query.numel() // C, 3 * C)]  # one packed projection
    else:
        projections = [(t.numel() // C, C) for t in (query, key, value)]
    proj, qk, av = _Tally(), _Tally(), _Tally()
    if layer.digital:
        for rows, O in projections:
            proj.add(_digital_tally(rows * C * O, cost))
        qk.add(_digital_tally(B * H * Nk * d * Nq, cost))
        av.add(_digital_tally(B * H * Nq * Nk * d, cost))
    else:
        for rows, O in projections:
            proj.add(_matmul_tally(rows, O, linear_tiles(C, macro.nrow), macro, True, cost))
        m = layer.qk_macro  # k is the activation role (signed), q the weight role
        qk.add(_matmul_tally(B * H * Nk, Nq, linear_tiles(d, m.nrow), m, True, cost))
        m = layer.av_macro  # the scores are the activation role (unsigned), v the weight role
        av.add(_matmul_tally(B * H * Nq, d, linear_tiles(Nk, m.nrow), m, False, cost))
    return [(".in_proj", proj), (".qk", qk), (".av", av)]


def _layer_tallies(layer: ACiMLayer, args, kwargs, output, cost: CostConfig):
    own = getattr(layer, "cost_tallies", None)  # layers outside asim.layers (asim.llm)
    if own is not None:
        return own(args, kwargs, output, cost)
    if isinstance(layer, ACiMMultiheadAttention):
        return _attention_tallies(layer, args, kwargs, output, cost)
    if isinstance(layer, ACiMConv2d):
        return _conv_tallies(layer, args, kwargs, output, cost)
    if isinstance(layer, ACiMLinear):
        return _linear_tallies(layer, args, kwargs, output, cost)
    return None


# ------------------------------------------------------------------------------ reports
def _per_sample(value, n: int):
    if isinstance(value, int) and value % n == 0:
        return value // n
    return value / n


def _entry(tally: _Tally, n: int, cost: CostConfig) -> dict:
    out = {k: _per_sample(v, n) for k, v in tally.counts.items()}
    breakdown = {k: v / n for k, v in tally.energy.items()}
    out["energy_pj"] = sum(breakdown.values())
    out["energy_breakdown_pj"] = breakdown
    out.update(_performance(tally, n, out["energy_pj"], cost))
    return out


def _performance(tally: _Tally, n: int, energy_pj: float, cost: CostConfig) -> dict:
    """The :data:`PERFORMANCE_FIELDS` of one entry (per sample; area of the macros used)."""
    latency = tally.timing["latency_ns"] / n
    macs = _per_sample(tally.timing["macs"], n)
    return {
        "macs": macs,
        "latency_ns": latency,
        "throughput_fps": 1e9 / latency if latency > 0 else None,
        "area_mm2": sum(cost.macro_area_mm2(m) for m in tally.macros.values()),
        "tops_per_w": 2 * macs / energy_pj if energy_pj > 0 else None,
    }


@dataclass
class CostReport:
    """Per-sample cost of a model: ``layers`` (dicts ``{name, <fields>}``) and ``totals``.

    Every count in :data:`COUNT_FIELDS`, ``energy_pj`` and ``energy_breakdown_pj`` (keys
    :data:`ENERGY_KEYS`, pJ) is per sample; ``energy_pj`` is the sum of the breakdown.
    """

    layers: list[dict]
    totals: dict
    num_samples: int
    cost: CostConfig

    @classmethod
    def from_tallies(
        cls, tallies: dict[str, _Tally], num_samples: int, cost: CostConfig
    ) -> CostReport:
        if not (isinstance(num_samples, int) and num_samples >= 1):
            raise ValueError(f"num_samples={num_samples!r} must be a positive integer")
        total = _Tally()
        for t in tallies.values():
            total.add(t)
        layers = [{"name": name, **_entry(t, num_samples, cost)} for name, t in tallies.items()]
        return cls(layers, _entry(total, num_samples, cost), num_samples, cost)

    def to_dict(self) -> dict:
        """``{"cost": totals, "cost_layers": [{"name": ..., ...}, ...]}`` for results.json."""
        return copy.deepcopy({"cost": self.totals, "cost_layers": self.layers})

    def table(self) -> str:
        """Per-layer conversions and energy per sample, as aligned text."""
        rows = [
            (x["name"], x["adc_conversions"], x["digital_macs"], x["energy_pj"])
            for x in self.layers
        ]
        rows.append(
            (
                "total",
                self.totals["adc_conversions"],
                self.totals["digital_macs"],
                self.totals["energy_pj"],
            )
        )
        width = max(len("layer"), *(len(r[0]) for r in rows))
        lines = [
            f"{'layer':<{width}}  {'ADC conv./sample':>17}  {'digital MACs':>13}  "
            f"{'energy/sample':>14}  ({self.cost.name})"
        ]
        for name, conv, macs, energy in rows:
            lines.append(f"{name:<{width}}  {conv:>17,.0f}  {macs:>13,.0f}  {_fmt_pj(energy):>14}")
        return "\n".join(lines)


def _fmt_pj(pj: float) -> str:
    for unit, scale in (("mJ", 1e9), ("uJ", 1e6), ("nJ", 1e3)):
        if pj >= scale:
            return f"{pj / scale:.3f} {unit}"
    return f"{pj:.3f} pJ"


class CostRecorder:
    """Counts the macro operations of every ACiM layer call while active (forward hooks).

    Use it around any forwards (a real simulation or one example batch), then ask for the
    per-sample report::

        with CostRecorder(model, cost) as rec:
            model(batch)
        report = rec.report(num_samples=batch.shape[0])

    Counts follow only the input shapes, so the layers' mode and noise do not change them.
    """

    def __init__(self, model: nn.Module, cost: CostConfig | None = None):
        if cost is not None and not isinstance(cost, CostConfig):
            raise TypeError(f"cost must be an asim.CostConfig, got {type(cost).__name__}")
        self.model = model
        self.cost = cost or CostConfig()
        self.tallies: dict[str, _Tally] = {}
        self._handles: list = []
        self._rank: dict[str, int] = {}  # report order: the model's module order, then parts
        self._order: dict[str, tuple[int, int]] = {}

    def __enter__(self) -> CostRecorder:
        for name, module in self.model.named_modules():
            self._rank[name or type(module).__name__] = len(self._rank)
            if isinstance(module, ACiMLayer):
                self._handles.append(
                    module.register_forward_hook(
                        self._hook(name or type(module).__name__), with_kwargs=True
                    )
                )
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _hook(self, name: str):
        def hook(module, args, kwargs, output):
            out = output[0] if isinstance(output, tuple) else output
            parts = _layer_tallies(module, args, kwargs, out, self.cost)
            if parts is None:
                warnings.warn(
                    f"asim.cost: no cost model for {type(module).__name__} ({name}); "
                    "it is left out of the report",
                    stacklevel=2,
                )
                return
            for part, (suffix, tally) in enumerate(parts):
                entry = name + suffix
                if entry not in self.tallies:
                    self._order[entry] = (self._rank[name], part)
                    self.tallies[entry] = _Tally()
                    self.tallies = {
                        n: self.tallies[n] for n in sorted(self.tallies, key=self._order.get)
                    }
                self.tallies[entry].add(tally)

        return hook

    def reset(self) -> None:
        """Forget the counts recorded so far."""
        self.tallies, self._order = {}, {}

    def report(self, num_samples: int) -> CostReport:
        """Per-sample report over everything recorded; ``num_samples`` samples were run."""
        if not self.tallies:
            raise ValueError(
                "CostRecorder recorded no ACiM layer call: run the model inside "
                "`with recorder:` (is it converted with asim.convert_to_acim?)"
            )
        return CostReport.from_tallies(self.tallies, num_samples, self.cost)


def _first_tensor(obj) -> Tensor | None:
    if isinstance(obj, Tensor):
        return obj
    if isinstance(obj, (list, tuple)):
        for o in obj:
            t = _first_tensor(o)
            if t is not None:
                return t
    if isinstance(obj, dict):
        return _first_tensor(list(obj.values()))
    return None


def estimate_cost(
    model: nn.Module,
    example_input=None,
    cost: CostConfig | None = None,
    *,
    num_samples: int | None = None,
    seq_len: int | None = None,
    generated_tokens: int = 0,
) -> CostReport:
    """The per-sample cost of ``model`` on ``example_input`` (one forward pass).

    Counts depend only on shapes, so the forward is the cheapest one: without gradients, every
    ACiM layer temporarily in ``"train"`` mode (fake-quantized float MACs: no macro simulation,
    no programmed arrays) with its noise-aware perturbation off, the model in eval mode (no
    dropout, no BatchNorm update). Modes, perturbations, training flags and torch's RNG state
    are restored afterwards, so the model is left exactly as it was. A model built on the meta
    device (``with torch.device("meta"): ...``) with a meta input gives the same report
    without allocating any weight.

    Args:
        model: a model with ACiM layers (see :func:`asim.convert_to_acim`).
        example_input: a tensor, or a tuple/list of positional arguments of ``model``.
        cost: per-operation energies (default :class:`CostConfig`).
        num_samples: samples in ``example_input``; default its first tensor's first dim.
        seq_len: a language model's prompt length (``transformers`` causal LMs): the report
            is that of a prompt of ``seq_len`` tokens (``num_samples`` sequences, default 1)
            in one forward, then ``generated_tokens`` decoding steps with a KV cache. Or give
            the prompt's token ids ``[B, T]`` as ``example_input``.
        generated_tokens: decoding steps after the prompt, one token each: every step writes
            that token's keys and values into the arrays of every attention layer
            (``cim_write_bits``) and runs QK^T and AV over the grown cache. These forwards run
            in ``"inference"`` mode (integer matmuls on the programmed weights), so a step
            does not fake-quantize every weight again.
    """
    forward = _lm_forward(model, example_input, seq_len, generated_tokens, num_samples)
    if forward is not None:
        example_input, num_samples, run = forward
    args = tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)
    if num_samples is None:
        first = _first_tensor(args)
        if first is None or first.dim() == 0:
            raise ValueError(
                "estimate_cost: cannot tell the batch size from example_input; pass num_samples=N"
            )
        num_samples = int(first.shape[0])
    layers = [m for m in model.modules() if isinstance(m, ACiMLayer)]
    saved = [(m, m.mode, m.trim_noise, getattr(m, "attn_trim_noise", None)) for m in layers]
    training = [(m, m.training) for m in model.modules()]
    devices = [t.device for t in args if isinstance(t, Tensor) and t.device.type == "cuda"]
    try:
        cheap = "train" if forward is None else "inference"  # decoding: no weight re-quantized
        for m in layers:
            if not m.digital:
                m.mode = cheap  # the cheapest forward: shapes are all the counts need
            m.trim_noise = 0.0
            if hasattr(m, "attn_trim_noise"):
                m.attn_trim_noise = 0.0
        model.eval()
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            with CostRecorder(model, cost) as rec:
                run() if forward is not None else model(*args)
    finally:
        for m, mode, trim, attn_trim in saved:
            m.mode = mode
            m.trim_noise = trim
            if attn_trim is not None:
                m.attn_trim_noise = attn_trim
        for m, flag in training:
            m.training = flag
    return rec.report(num_samples)


def _lm_forward(model, example_input, seq_len, generated_tokens, num_samples):
    """``(prompt, sequences, run)`` of a language model's prompt and decoding steps, or None
    (``seq_len`` not given, no generated tokens)."""
    if seq_len is None and not generated_tokens:
        return None
    if not (isinstance(generated_tokens, int) and generated_tokens >= 0):
        raise ValueError(f"generated_tokens={generated_tokens!r} must be an integer >= 0")
    from .convert import _llm_support

    llm = _llm_support(model)
    if llm is None:
        raise ValueError(
            "estimate_cost: seq_len/generated_tokens need a transformers causal LM converted "
            "with asim.convert_to_acim"
        )
    if example_input is None:
        if not (isinstance(seq_len, int) and seq_len >= 1):
            raise ValueError(f"seq_len={seq_len!r} must be a positive integer")
        device = next(model.parameters()).device
        example_input = torch.zeros(num_samples or 1, seq_len, dtype=torch.int64, device=device)
    elif seq_len is not None and example_input.shape[-1] != seq_len:
        raise ValueError(
            f"seq_len={seq_len} differs from the prompt's {example_input.shape[-1]} tokens; "
            "give one of them"
        )
    prompt = example_input
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(limit, int) and prompt.shape[-1] + generated_tokens > limit:
        raise ValueError(
            f"seq_len + generated_tokens = {prompt.shape[-1] + generated_tokens} exceeds the "
            f"model's {limit} positions; give a shorter prompt or fewer tokens"
        )
    return prompt, int(prompt.shape[0]), lambda: llm.decode(model, prompt, generated_tokens)
