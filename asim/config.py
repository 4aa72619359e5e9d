"""Macro and noise configuration: every simulation default lives here, once.

The two dataclasses are plain Python (no Hydra import); the application stores them as
structured-config schemas so YAML presets only list what differs. Field docstrings give the
unit and the reference implementation's (Keio-CSG/ASiM) name for the same knob. Section
numbers (§) refer to ``acim-model.md``, the computation spec.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum

__all__ = [
    "ActScale",
    "CellVariation",
    "ConvTiling",
    "Division",
    "MacroConfig",
    "NoiseConfig",
    "SignCycleCompression",
    "WeightParallelADC",
]


class ActScale(str, Enum):
    """How the activation quantization scale is taken (spec Q5)."""

    batch = "batch"  # one scale over the whole batch tensor (reference behaviour)
    sample = "sample"  # one scale per sample: results independent of batching/sharding


class ConvTiling(str, Enum):
    """Which channel groups of a conv are mapped to the array (spec §3.1, Q1)."""

    reference = "reference"  # ceil(C*k*k/nrow) tiles: trailing channel groups may be dropped
    all_groups = "all_groups"  # every ceil(C/floor(nrow/k^2)) group is processed


class Division(str, Enum):
    """Float semantics of the ADC's divisions by nrow and 2^adc-1 (spec Q10).

    ``ieee`` was called ``true`` (``macro.division=true`` reads as a YAML boolean); the old
    spelling is still accepted, as a string, and means ``ieee``.
    """

    ieee = "ieee"  # IEEE (true) division: the reference on CPU (canonical)
    reciprocal = "reciprocal"  # multiply by the float32 reciprocal: the reference on CUDA
    true = "ieee"  # alias of ieee (the old name)

    @classmethod
    def _missing_(cls, value):
        return cls.ieee if value == "true" else None


class WeightParallelADC(str, Enum):
    """Where the weight-parallel (W4A4) mode converts (spec §8.3, Q30)."""

    output = "output"  # one ADC per output on the exact MAC (the reference conv; canonical)
    per_cycle = "per_cycle"  # the running sum re-quantized after every tile x bit x cycle
    # (the reference linear layer's behaviour)


class SignCycleCompression(str, Enum):
    """Where gain compression acts on a signed bit-parallel input's sign cycle (§8.1, Q28)."""

    counts = "counts"  # on the raw count, like every other cycle (canonical)
    normalised = "normalised"  # on the normalised value after noise (the reference linear)


class CellVariation(str, Enum):
    """When weight-cell variation is drawn (spec §8.1, Q28)."""

    per_forward = "per_forward"  # redrawn on every forward call (reference behaviour)
    per_chip = "per_chip"  # drawn once per chip; redraw with ``asim.resample_noise``


def _coerce_enum(obj, field: str, enum: type[Enum]) -> None:
    value = getattr(obj, field)
    if isinstance(value, enum):
        return
    try:
        object.__setattr__(obj, field, enum(value))  # frozen: __post_init__ normalises once
    except ValueError:
        choices = ", ".join(repr(m.value) for m in enum)
        raise ValueError(
            f"{type(obj).__name__}.{field}={value!r} is not valid; choose one of {choices}"
        ) from None


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _floats(v) -> tuple[float, ...] | None:
    return None if v is None else tuple(float(x) for x in v)


@dataclass(frozen=True)
class MacroConfig:
    """One SRAM ACiM macro: bit widths, array size, ADC and cycle scheme.

    The defaults are the reference's shipped configuration (W8A8, nrow 255, 8-bit ADC,
    bit-serial), which is lossless: with noise off it equals integer inference exactly.
    """

    name: str = "custom"
    """Label shown in ``print(model)`` and in result files."""
    weight_bits: int = 8
    """Weight bit width incl. sign, >= 2 (ASiM ``wbit``; attention: ``qk_qbit``/``av_vbit``)."""
    input_bits: int = 8
    """Activation bit width, >= 2; signed inputs include the sign bit (ASiM ``xbit``)."""
    nrow: int = 255
    """Rows switched on at once in one column: the tile height and the full scale of a
    single-bit column MAC (ASiM ``nrow``)."""
    adc_bits: int = 8
    """ADC resolution in bits, >= 1 (ASiM ``adc_prec``). Lossless when 2^adc_bits-1 == nrow."""
    input_enc_bits: int | None = None
    """None: bit-serial inputs. An int e: bit-parallel, e activation bits applied per cycle as
    a multi-level input (ASiM ``act_enc``, spec §5)."""
    hybrid_levels: int = 0
    """Number of anti-diagonals of MSB cycles run digitally, i.e. without noise (ASiM
    ``hybrid_levels``, spec §6). 0 = all analog."""
    hybrid_exact: bool = False
    """If True, digital hybrid cycles are exact instead of still passing the ADC (spec Q4)."""
    vote_levels: int = 0
    """Majority voting on the MSB cycles: anti-diagonals of cycles converted ``vote_samples``
    times with fresh noise, keeping the most frequent code (ASiM ``voting_levels``, §8.2)."""
    vote_samples: int = 1
    """Conversions per voted cycle, K (ASiM ``num_samp``); 3 is the paper's setting."""
    weight_parallel: bool = False
    """W4A4-style weight full bit-parallel mode: one signed ADC per output on the exact MAC
    (ASiM extension ``weight_bp``, spec §8.3). Needs ``input_enc_bits`` and unsigned inputs."""
    weight_parallel_rows: int | None = None
    """Full scale of the weight-parallel ADC in rows; None means ``nrow`` (the reference
    conv: one tile's full scale even when several tiles are summed)."""
    weight_parallel_adc: WeightParallelADC = WeightParallelADC.output
    """``output``: one signed ADC per output (the fix of Q30, default); ``per_cycle``: the
    reference linear's re-quantization of the running sum after every tile, weight bit and
    cycle, kept for compatibility."""
    conv_tiling: ConvTiling = ConvTiling.reference
    """``reference``: reproduce the reference's silently dropped channel groups (spec Q1);
    ``all_groups``: map every input channel."""
    act_scale: ActScale = ActScale.batch
    """``batch``: one activation scale per batch tensor (reference, Q5); ``sample``: per sample."""
    division: Division = Division.ieee
    """``ieee``: CPU float semantics (canonical; ``true`` is the old name); ``reciprocal``: the
    reference's CUDA numbers."""
    adc_full_scale: int | None = None
    """The ADC's full scale as a column count (spec §4.5): a cycle converts
    ``levels * adc_full_scale`` counts onto its codes, larger counts clip to the top code.
    None: ``nrow``, the reference's fixed full scale (bit-identical to it)."""
    adc_thresholds: tuple[float, ...] | None = None
    """Non-uniform ADC levels (spec §4.6): the ``2^adc_bits - 1`` decision thresholds, strictly
    ascending fractions of the cycle's full scale in (0, 1); set together with
    ``adc_values``. None: the uniform ADC."""
    adc_values: tuple[float, ...] | None = None
    """The ``2^adc_bits`` output levels of a non-uniform ADC, fractions of the cycle's full
    scale (code k reads ``fl(adc_values[k] * F)``); set together with ``adc_thresholds``."""
    adc_levels_csv: str | None = None
    """A CSV of non-uniform ADC levels (:func:`asim.read_adc_levels`), read when the config is
    built; it fills ``adc_thresholds`` and ``adc_values``."""

    def __post_init__(self) -> None:
        for field, enum in (
            ("conv_tiling", ConvTiling),
            ("act_scale", ActScale),
            ("division", Division),
            ("weight_parallel_adc", WeightParallelADC),
        ):
            _coerce_enum(self, field, enum)
        for field in (
            "weight_bits",
            "input_bits",
            "nrow",
            "adc_bits",
            "hybrid_levels",
            "vote_levels",
            "vote_samples",
        ):
            _check(
                _is_int(getattr(self, field)),
                f"MacroConfig.{field}={getattr(self, field)!r} must be an integer",
            )
        _check(
            self.weight_bits >= 2,
            f"MacroConfig.weight_bits={self.weight_bits} must be >= 2 (sign + 1 magnitude bit)",
        )
        _check(self.input_bits >= 2, f"MacroConfig.input_bits={self.input_bits} must be >= 2")
        _check(self.nrow >= 1, f"MacroConfig.nrow={self.nrow} must be >= 1 row")
        _check(1 <= self.adc_bits <= 24, f"MacroConfig.adc_bits={self.adc_bits} must be in 1..24")
        if self.input_enc_bits is not None:
            _check(
                _is_int(self.input_enc_bits) and 1 <= self.input_enc_bits <= self.input_bits,
                f"MacroConfig.input_enc_bits={self.input_enc_bits!r} must be null (bit-serial) "
                f"or an integer in 1..input_bits={self.input_bits}",
            )
        _check(
            self.hybrid_levels >= 0,
            f"MacroConfig.hybrid_levels={self.hybrid_levels} must be >= 0 (0 = all analog)",
        )
        _check(
            self.vote_levels >= 0,
            f"MacroConfig.vote_levels={self.vote_levels} must be >= 0 (0 = no voting)",
        )
        _check(self.vote_samples >= 1, f"MacroConfig.vote_samples={self.vote_samples} must be >= 1")
        if self.vote_levels > 0 or self.vote_samples > 1:
            _check(
                self.input_enc_bits is None,
                "MacroConfig: majority voting (vote_levels/vote_samples) works with bit-serial "
                "inputs only; set input_enc_bits=null or vote_levels=0, vote_samples=1",
            )
            _check(
                self.hybrid_levels == 0,
                "MacroConfig: majority voting and hybrid_levels are exclusive (voting makes "
                "every cycle analog); set hybrid_levels=0 or vote_levels=0",
            )
        if self.weight_parallel:
            _check(
                self.input_enc_bits is not None,
                "MacroConfig.weight_parallel=true needs bit-parallel inputs: set input_enc_bits",
            )
            _check(
                self.input_bits % self.input_enc_bits == 0,
                f"MacroConfig.weight_parallel=true needs input_bits={self.input_bits} to be a "
                f"multiple of input_enc_bits={self.input_enc_bits}",
            )
            _check(
                self.adc_bits >= 2,
                "MacroConfig.weight_parallel=true uses a signed ADC: adc_bits must be >= 2",
            )
        self._check_adc_range()
        if self.weight_parallel_rows is not None:
            _check(
                _is_int(self.weight_parallel_rows) and self.weight_parallel_rows >= 1,
                f"MacroConfig.weight_parallel_rows={self.weight_parallel_rows!r} must be null "
                "or a positive integer",
            )

    def _check_adc_range(self) -> None:
        """Validate (and normalise to tuples) the ADC range and level fields (§4.5, §4.6)."""
        if self.adc_full_scale is not None:
            _check(
                _is_int(self.adc_full_scale) and self.adc_full_scale >= 1,
                f"MacroConfig.adc_full_scale={self.adc_full_scale!r} must be null (= nrow) or "
                "a positive integer column count",
            )
            _check(
                not self.weight_parallel,
                "MacroConfig: weight_parallel has its own ADC range (weight_parallel_rows); "
                "set adc_full_scale to null",
            )
        if self.adc_levels_csv is not None:
            from .adc_levels import read_adc_levels

            path = self.adc_levels_csv
            if hasattr(path, "__fspath__"):
                object.__setattr__(self, "adc_levels_csv", str(path))
            thresholds, values = read_adc_levels(self.adc_levels_csv)
            given = (self.adc_thresholds, self.adc_values)
            if given != (None, None) and (
                _floats(given[0]) != thresholds or _floats(given[1]) != values
            ):
                raise ValueError(
                    "MacroConfig: set either adc_levels_csv or adc_thresholds/adc_values, not "
                    "both; set the other to null"
                )
            object.__setattr__(self, "adc_thresholds", thresholds)
            object.__setattr__(self, "adc_values", values)
        if (self.adc_thresholds is None) != (self.adc_values is None):
            raise ValueError(
                "MacroConfig: non-uniform ADC levels need both adc_thresholds and adc_values "
                "(or adc_levels_csv); set both, or both to null"
            )
        if self.adc_thresholds is None:
            return
        _check(
            not self.weight_parallel,
            "MacroConfig: weight_parallel has its own signed ADC; set adc_thresholds and "
            "adc_values to null",
        )
        from .adc_levels import check_levels

        thresholds, values = check_levels(
            self.adc_thresholds, self.adc_values, self.adc_bits, "MacroConfig"
        )
        object.__setattr__(self, "adc_thresholds", thresholds)
        object.__setattr__(self, "adc_values", values)

    @property
    def adc_levels(self) -> int:
        """Largest ADC code, ``2^adc_bits - 1`` (spec §0, A)."""
        return (1 << self.adc_bits) - 1

    @property
    def adc_rows(self) -> int:
        """The ADC's full scale in column counts per input level: ``adc_full_scale`` or
        ``nrow`` (spec §4.5)."""
        return self.nrow if self.adc_full_scale is None else self.adc_full_scale

    @property
    def lossless(self) -> bool:
        """True when a noise-free bit-serial cycle reproduces its column count exactly."""
        return (
            self.adc_levels == self.nrow
            and self.input_enc_bits in (None, 1)
            and self.adc_rows == self.nrow
            and self.adc_thresholds is None
        )

    def replace(self, **changes) -> MacroConfig:
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        """Short human-readable summary used by ``extra_repr``."""
        enc = "serial" if self.input_enc_bits is None else f"parallel{self.input_enc_bits}"
        parts = [
            f"W{self.weight_bits}A{self.input_bits}",
            f"nrow={self.nrow}",
            f"adc={self.adc_bits}",
            enc,
        ]
        if self.hybrid_levels:
            parts.append(f"hybrid={self.hybrid_levels}")
        if self.vote_levels:
            parts.append(f"vote={self.vote_levels}x{self.vote_samples}")
        if self.weight_parallel:
            parts.append("weight_parallel")
        if self.adc_full_scale is not None:
            parts.append(f"adc_fs={self.adc_full_scale}")
        if self.adc_thresholds is not None:
            parts.append("adc_levels=table")
        return f"{self.name}({', '.join(parts)})"


@dataclass(frozen=True)
class NoiseConfig:
    """Analog non-idealities of the column read-out (spec §4.1, §8.1).

    Sigmas are in percent of the ADC full scale, as in the reference: one LSB of an 8-bit
    ADC is 100/255 = 0.392 %; or, with the ``_lsb`` fields, in LSB of each layer's ADC
    (:meth:`at_adc` converts). Noise is temporal: fresh for every partial sum and forward call.
    """

    rand_sigma: float = 0.0
    """Signal-independent Gaussian noise, % of full scale (ASiM ``rand_noise_sigma``)."""
    nonlinear_sigma: float = 0.0
    """Signal-dependent noise, % of full scale, divided by sqrt(count+1)
    (ASiM ``non_linear_sigma``)."""
    rand_sigma_lsb: float = 0.0
    """``rand_sigma`` stated in LSB rms of the layer's ADC, as silicon papers quote it: 1 LSB
    is ``100 / (2^adc_bits - 1)`` % of full scale (0.392 % at 8 bits). Exclusive with the
    percent fields."""
    nonlinear_sigma_lsb: float = 0.0
    """``nonlinear_sigma`` in LSB rms of the layer's ADC (see ``rand_sigma_lsb``)."""
    file: str | None = None
    """Measured noise table (CSV with columns ``count,offset,std`` in ADC LSB per ideal
    column count); replaces the two Gaussian terms when set. See ``asim.noise``."""
    histogram: str | None = None
    """Measured code histogram (CSV with columns ``count,delta,weight``: ideal column count,
    measured minus ideal ADC code in LSB, frequency); replaces the Gaussian terms and
    ``file`` when set. See ``asim.noise.HistogramNoise`` and ``conf/noise/histogram.yaml``."""
    compression_alpha: float = 0.0
    """Current-domain gain compression: count M becomes M/(1+alpha*M) before the ADC
    (ASiM current-domain ``non_linear_alpha``, spec §8.1). 0 = off. The reference's
    current-domain model has no count-dependent noise: set ``nonlinear_sigma=0`` to match."""
    cell_sigma: float = 0.0
    """Weight-cell variation, % of a cell's unit current, added to every stored bit
    (ASiM current-domain ``weight_var``). 0 = off."""
    cell_variation: CellVariation = CellVariation.per_forward
    """``per_forward``: redraw cell variation on every call (reference); ``per_chip``: fixed."""
    sign_cycle_compression: SignCycleCompression = SignCycleCompression.counts
    """``counts``: compress the sign cycle's raw count like every cycle (fix of Q28);
    ``normalised``: compress its normalised value after the noise, as the reference's
    current-domain linear does for signed bit-parallel inputs (compatibility)."""
    column_offset_lsb: float = 0.0
    """A chip's fixed pattern (spec §4.7): standard deviation of each ADC's input-referred
    offset, in LSB of the layer's ADC. Drawn once per chip (``chip_seed``). 0 = off."""
    column_gain_pct: float = 0.0
    """Standard deviation of each ADC's gain error, % (its full scale becomes F/(1+g)). 0 = off."""
    column_sigma_spread: float = 0.0
    """Relative spread of each ADC's temporal noise: its sigma is the model's times
    ``max(0, 1 + spread * Z)`` (in steps of 1/8). 0 = every ADC equally noisy."""
    adc_group: int = 1
    """Adjacent columns sharing one ADC and its mismatch (spec §4.7); 1 = one ADC per column."""
    column_trim_lsb: float | None = None
    """Digital offset trim: each ADC's offset is trimmed in steps of this size (LSB), leaving
    the residual ``offset - step * rne(offset / step)``. None = no trim."""
    chip_seed: int | None = None
    """Which chip the fixed pattern is drawn for; None = the layer's noise seed (the run's
    seed). A different chip_seed is a different chip."""

    def __post_init__(self) -> None:
        _coerce_enum(self, "cell_variation", CellVariation)
        _coerce_enum(self, "sign_cycle_compression", SignCycleCompression)
        for field in (
            "rand_sigma",
            "nonlinear_sigma",
            "rand_sigma_lsb",
            "nonlinear_sigma_lsb",
            "compression_alpha",
            "cell_sigma",
            "column_offset_lsb",
            "column_gain_pct",
            "column_sigma_spread",
        ):
            value = getattr(self, field)
            _check(
                isinstance(value, (int, float)) and not isinstance(value, bool),
                f"NoiseConfig.{field}={value!r} must be a number",
            )
            _check(value >= 0, f"NoiseConfig.{field}={value} must be >= 0")
            object.__setattr__(self, field, float(value))
        for field in ("file", "histogram"):
            value = getattr(self, field)
            if value is not None and not isinstance(value, str):
                value = str(value) if hasattr(value, "__fspath__") else value
                object.__setattr__(self, field, value)
            _check(
                value is None or (isinstance(value, str) and value.strip() != ""),
                f"NoiseConfig.{field}={value!r} must be null or a path to a CSV file",
            )
        _check(
            not (self._lsb and (self.rand_sigma > 0 or self.nonlinear_sigma > 0)),
            "NoiseConfig: state the Gaussian noise in one unit: noise.rand_sigma/"
            "nonlinear_sigma (% of full scale) or noise.rand_sigma_lsb/nonlinear_sigma_lsb "
            "(LSB of the ADC); set the other pair to 0 (the app's presets: noise=gaussian, "
            "noise=gaussian_lsb)",
        )
        _check(
            _is_int(self.adc_group) and self.adc_group >= 1,
            f"NoiseConfig.adc_group={self.adc_group!r} must be a positive integer "
            "(columns per ADC)",
        )
        if self.column_trim_lsb is not None:
            v = self.column_trim_lsb
            _check(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0,
                f"NoiseConfig.column_trim_lsb={v!r} must be null (no trim) or a step > 0 (LSB)",
            )
            object.__setattr__(self, "column_trim_lsb", float(v))
        _check(
            self.chip_seed is None or _is_int(self.chip_seed),
            f"NoiseConfig.chip_seed={self.chip_seed!r} must be null (the run's seed) or an integer",
        )
        _check(
            self.column_gain_pct < 50,
            f"NoiseConfig.column_gain_pct={self.column_gain_pct} must be < 50 (%)",
        )
        if self.fixed_pattern:
            _check(
                self.compression_alpha == 0 and self.cell_sigma == 0,
                "NoiseConfig: the fixed column pattern (column_*) works on integer counts; set "
                "compression_alpha=0 and cell_sigma=0, or the column_* fields to 0",
            )
        if self.histogram is not None:
            _check(
                self.file is None,
                "NoiseConfig: set only one of noise.file (offset/std table) and "
                "noise.histogram (code histogram); set the other to null",
            )
            _check(
                self.rand_sigma == 0 and self.nonlinear_sigma == 0 and not self._lsb,
                "NoiseConfig.histogram replaces the Gaussian noise; set noise.rand_sigma=0 "
                "and noise.nonlinear_sigma=0 (and their _lsb forms)",
            )

    @property
    def fixed_pattern(self) -> bool:
        """True when a chip's fixed per-ADC pattern is drawn (spec §4.7)."""
        return (
            self.column_offset_lsb > 0 or self.column_gain_pct > 0 or self.column_sigma_spread > 0
        )

    @property
    def enabled(self) -> bool:
        """True when any read-out noise is drawn (cell variation and compression aside)."""
        return (
            self.rand_sigma > 0
            or self.nonlinear_sigma > 0
            or self._lsb
            or self.file is not None
            or self.histogram is not None
        )

    @property
    def _lsb(self) -> bool:
        return self.rand_sigma_lsb > 0 or self.nonlinear_sigma_lsb > 0

    def at_adc(self, adc_bits: int) -> NoiseConfig:
        """This noise with the Gaussian sigmas in % of full scale for an ``adc_bits`` ADC:
        the LSB fields converted (1 LSB = ``100 / (2^adc_bits - 1)`` %), the only place
        that conversion is made; itself when no LSB field is set."""
        if not self._lsb:
            return self
        levels = (1 << adc_bits) - 1
        return dataclasses.replace(
            self,
            rand_sigma=self.rand_sigma_lsb * 100.0 / levels,
            nonlinear_sigma=self.nonlinear_sigma_lsb * 100.0 / levels,
            rand_sigma_lsb=0.0,
            nonlinear_sigma_lsb=0.0,
        )

    def replace(self, **changes) -> NoiseConfig:
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)
