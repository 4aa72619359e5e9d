"""The compiled macro program: everything one layer's matmul derives from its configuration.

A :class:`Program` is built once per distinct (macro, noise, signedness, tiles, outputs), by
:func:`compile_program`, and a layer keeps its own (rebuilt only when one of those changes,
never per call). It holds:

* the cycle :class:`~asim.engine.plan.Plan` (cycles, shift-and-add weights, what every
  (weight bit, cycle) conversion does, the noise model);
* the tiles (reduction-row ranges loaded one after the other) and the number of outputs;
* every backend's derived constants, built on the backend's first call and kept
  (:meth:`Program.form`): the C kernel's argument struct and code tables, the torch
  backend's value tables on its device, the Triton kernel's device tables.

The weights are programmed separately (:class:`~asim.engine.operands.ProgrammedArray`,
once per weight change), so layers of equal shape and configuration share one program.
The cost model counts operations from it (:meth:`Program.operations`).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..config import MacroConfig, NoiseConfig, WeightParallelADC
from .plan import DIGITAL, VOTED_ANALOG, Plan, build_plan, linear_tiles

if TYPE_CHECKING:
    from .pattern import ColumnRanges

__all__ = ["Operations", "Program", "compile_program"]


@dataclass(frozen=True)
class Operations:
    """What one ``X [rows, R] @ W [R, O]`` costs on the macro, counted from the program
    (spec §3-§8): the cost model turns these into energy (:mod:`asim.cost`).

    Attributes:
        adc_conversions: ADC conversions (``K`` per voted partial sum; a hybrid digital
            cycle is converted too unless ``hybrid_exact``, Q4).
        digital_partial_sums: hybrid MSB partial sums computed digitally (§6).
        shift_adds: digital shift-and-adds of partial sums.
        array_cycles: array activations (a voted cycle is run ``K`` times).
        row_activations: rows driven over all array cycles.
        binary_macs: 1-bit products evaluated in the array.
        evaluations: analog column evaluations (each converted once).
        voted_sums: voted partial sums (one majority vote each).
        cycle_repeats: per activation cycle, how often it is applied (``K`` if voted).
        cycle_widths: per activation cycle, its activation bits applied together.
        mapped_rows: reduction rows holding weights (dropped channels, Q1, excluded).
    """

    adc_conversions: int
    digital_partial_sums: int
    shift_adds: int
    array_cycles: int
    row_activations: int
    binary_macs: int
    evaluations: int
    voted_sums: int
    cycle_repeats: tuple[int, ...]
    cycle_widths: tuple[int, ...]
    mapped_rows: int


@dataclass(frozen=True, eq=False)
class Program:
    """One compiled macro program (see the module docstring); read-only.

    Attributes:
        plan: the cycle plan and ADC arithmetic of the macro and noise.
        tiles: ``(start, stop)`` reduction-row ranges, each normalised by ``nrow``.
        outputs: output columns ``O``.
        noise: the noise configuration it was compiled with.
        chip: the 64-bit key of the chip whose fixed pattern (spec §4.7) it converts with
            (None without one); :attr:`pattern` is drawn from it once.
        ranges: each ADC's own calibrated full scale
            (:class:`~asim.engine.pattern.ColumnRanges`, spec §4.8), or None.

    Copying a layer shares its programs (they are read-only); pickling one stores how to
    compile it again.
    """

    plan: Plan
    tiles: tuple[tuple[int, int], ...]
    outputs: int
    noise: NoiseConfig | None = None
    chip: int | None = None
    ranges: ColumnRanges | None = None
    _forms: dict = field(default_factory=dict, repr=False, compare=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    @property
    def macro(self) -> MacroConfig:
        return self.plan.macro

    @property
    def signed(self) -> bool:
        return self.plan.signed

    @property
    def noisy(self) -> bool:
        """Does any conversion draw a random code?"""
        return self.plan.noisy

    @property
    def weight_parallel(self) -> bool:
        """The W4A4 weight-parallel mode (spec §8.3): one signed ADC on the exact MAC."""
        return self.plan.macro.weight_parallel

    @functools.cached_property
    def max_rows(self) -> int:
        """Rows of the tallest tile (0 without tiles)."""
        return max((b - a for a, b in self.tiles), default=0)

    @functools.cached_property
    def top(self) -> int:
        """The largest count a conversion can see: tallest tile x most input levels."""
        return self.max_rows * max(c.levels for c in self.plan.cycles)

    @property
    def pattern(self):
        """The chip's :class:`~asim.engine.pattern.ColumnPattern` (spec §4.7) with the ADCs'
        own full scales (§4.8), drawn on first use and kept; None without either."""
        if self.plan.pattern is None and self.ranges is None:
            return None
        from .pattern import draw_pattern

        return self.form(
            "pattern",
            lambda: draw_pattern(self.plan, self.tiles, self.outputs, self.chip, self.ranges),
        )

    def lossless(self) -> bool:
        """Every conversion returns its exact count (:meth:`Plan.lossless`; per-ADC full
        scales, §4.8, never are)."""
        return self.ranges is None and self.plan.lossless()

    def __deepcopy__(self, memo) -> Program:
        return self

    def __reduce__(self):
        args = (self.plan.macro, self.noise, self.plan.signed, self.tiles, self.outputs, self.chip)
        return compile_program, (*args, self.ranges)

    def form(self, key, build: Callable[[], object]):
        """The derived form ``key`` (e.g. a backend's kernel arguments on a device), built
        by ``build()`` on first use and kept with the program."""
        hit = self._forms.get(key)
        if hit is None:
            with self._lock:
                hit = self._forms.get(key)
                if hit is None:
                    hit = self._forms[key] = build()
        return hit

    def operations(self, rows: int) -> Operations:
        """The operations of ``rows`` input rows through this program (tiles x modes x rows)."""
        plan, macro = self.plan, self.plan.macro
        w, T, K = macro.weight_bits, len(self.tiles), macro.vote_samples
        ncyc = plan.ncyc
        outs = rows * self.outputs  # output elements of one tile
        mapped = sum(b - a for a, b in self.tiles)
        widths = tuple(len(c.bits) for c in plan.cycles)
        if self.weight_parallel:  # spec §8.3: the weight bits are summed in the array
            evals = T * w * ncyc * outs
            per_cycle = macro.weight_parallel_adc == WeightParallelADC.per_cycle
            conversions, digital, shift_adds, voted = (
                evals if per_cycle else outs,
                0,
                evals if per_cycle else 0,
                0,
            )
            reps = (1,) * ncyc
        else:
            kinds = [plan.kind[i][c] for i in range(w) for c in range(ncyc)]
            # a hybrid digital cycle still passes the ADC unless hybrid_exact (Q4)
            per_output = sum(
                K if k == VOTED_ANALOG else 1
                for k in kinds
                if k != DIGITAL or not macro.hybrid_exact
            )
            evals = conversions = T * outs * per_output
            digital = T * outs * kinds.count(DIGITAL)
            shift_adds = T * outs * w * ncyc
            voted = T * outs * kinds.count(VOTED_ANALOG)
            reps = tuple(
                K if any(plan.kind[i][c] == VOTED_ANALOG for i in range(w)) else 1
                for c in range(ncyc)
            )
        return Operations(
            adc_conversions=conversions,
            digital_partial_sums=digital,
            shift_adds=shift_adds,
            array_cycles=T * rows * sum(reps),
            row_activations=mapped * rows * sum(reps),
            binary_macs=w * mapped * outs * sum(r * b for r, b in zip(reps, widths, strict=True)),
            evaluations=evals,
            voted_sums=voted,
            cycle_repeats=reps,
            cycle_widths=widths,
            mapped_rows=mapped,
        )


_PROGRAMS: dict = {}
_PROGRAMS_MAX = 512
_PROGRAMS_LOCK = threading.Lock()


def normalise_tiles(tiles: Sequence[tuple[int, int]] | None, rows: int, nrow: int) -> tuple:
    """``tiles`` as a tuple of non-empty ``(start, stop)`` int pairs (default: consecutive
    tiles of ``nrow`` rows over ``rows``)."""
    if tiles is None:
        tiles = linear_tiles(rows, nrow)
    return tuple((int(a), int(b)) for a, b in tiles if b > a)


def compile_program(
    macro: MacroConfig,
    noise: NoiseConfig | None,
    signed: bool,
    tiles: Sequence[tuple[int, int]],
    outputs: int,
    chip: int | None = None,
    ranges: ColumnRanges | None = None,
) -> Program:
    """The :class:`Program` of a matmul with ``outputs`` columns, its reduction tiled as
    ``tiles``, on ``macro`` with ``noise`` and signed or unsigned inputs; calls with equal
    arguments (and noise file contents) share one. ``chip`` is the 64-bit key of the chip
    whose fixed pattern (spec §4.7) applies, when ``noise`` has one (layers pass their own);
    default: ``asim.rng.layer_key(noise.chip_seed or 0, 0)``. ``ranges``
    (:class:`~asim.engine.pattern.ColumnRanges`, spec §4.8) gives each ADC its own full scale;
    ranges equal to the layer's everywhere are the same as None."""
    plan = build_plan(macro, noise, signed)
    tiles = tuple((int(a), int(b)) for a, b in tiles if b > a)
    if ranges is not None:
        ranges = _checked_ranges(plan, ranges, len(tiles), int(outputs))
    if plan.pattern is None:
        chip = None
    elif chip is None:
        from ..rng import layer_key

        chip = layer_key(noise.chip_seed or 0, 0)
    else:
        chip = int(chip) & ((1 << 64) - 1)
    key = (id(plan), tiles, int(outputs), chip, ranges)
    hit = _PROGRAMS.get(key)
    if hit is not None and hit.plan is plan:
        return hit
    program = Program(plan, tiles, int(outputs), noise, chip, ranges)
    with _PROGRAMS_LOCK:
        if len(_PROGRAMS) >= _PROGRAMS_MAX:
            _PROGRAMS.clear()
        _PROGRAMS[key] = program
    return program


def _checked_ranges(
    plan: Plan, ranges: ColumnRanges, tiles: int, outputs: int
) -> ColumnRanges | None:
    """``ranges`` if they fit the program (one-line errors otherwise), None where every ADC
    has the layer's full scale (spec §4.8)."""
    from .pattern import ColumnRanges
    from .plan import FINE_BITS

    if not isinstance(ranges, ColumnRanges):
        raise TypeError(f"ranges must be an asim ColumnRanges, got {type(ranges).__name__}")
    macro = plan.macro
    if macro.weight_parallel or plan.alpha or plan.cell_sigma:
        raise ValueError(
            "per-ADC full scales (ColumnRanges) work on integer counts of bit-serial columns; "
            "drop them for macro.weight_parallel, compression_alpha or cell_sigma"
        )
    ranges.check(tiles, outputs, macro.weight_bits, macro.adc_rows)
    if plan.pattern is not None and plan.pattern.group != ranges.group:
        raise ValueError(
            f"ColumnRanges: calibrated for adc_group={ranges.group}, the noise has "
            f"adc_group={plan.pattern.group}; calibrate with the noise the layer runs with"
        )
    if max(plan.full_scale) << FINE_BITS >= 1 << 24:
        raise ValueError(
            f"per-ADC full scales need a full scale below {(1 << 24) >> FINE_BITS} counts "
            f"(got {max(plan.full_scale)}); reduce nrow, adc_full_scale or input_enc_bits"
        )
    if all(v == macro.adc_rows for row in ranges.full_scale for v in row):
        return None
    return ranges
