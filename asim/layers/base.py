"""ACiMLayer: the mixin every ACiM layer shares (modes, quantizers, noise state, repr).

Noise: a layer seeded by :func:`asim.resample_noise` derives one 64-bit key per engine call
from its seed (:func:`asim.rng.layer_key`, :func:`asim.rng.sub_key`), and tells the engine
the global dataset index of each batch row (:func:`set_sample_index`), so a sample's noise
depends on (seed, layer, sample) only. Weights are programmed once per weight change
(:class:`asim.engine.ProgrammedArray`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import operator
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .. import rng
from ..config import ActScale, CellVariation, Division, MacroConfig, NoiseConfig
from ..engine import NoiseStream, Program, ProgrammedArray, acim_matmul, compile_program
from ..noise import file_version
from ..quant import (
    dequantize,
    fake_quantize,
    quantize,
    signed_levels,
    tensor_scale,
    unsigned_levels,
)

__all__ = ["MODES", "ACiMLayer", "Lowered", "set_sample_index"]

MODES = ("train", "inference", "simulate")
"""``train``: fake quantization with straight-through gradients (QAT/NAT, spec §1.5);
``inference``: integer quantized MAC, the ideal quantized result (§1.4);
``simulate``: the bit-level macro (§2-§8)."""


@dataclass
class Lowered:
    """One matmul a layer's forward lowers to, run in the layer's mode by
    :meth:`ACiMLayer._run`: ``op(x, w, bias)`` with fake-quantized operands (``train``), the
    integer ``op`` (``inference``), or ``engine(x_int, weights)`` on the macro
    (``simulate``), then de-quantized and ``add_bias``-ed.

    Attributes:
        x: the activation-role input (float).
        w: the weight-role operand (float): a parameter (``layout`` given: quantized and
            programmed once per weight change, laid out ``[R, O]`` by ``layout``) or another
            activation (``layout`` None: quantized every call, per sample with
            ``act_scale="sample"``).
        bias: added in the float domain (inside ``op`` in ``train``), or None.
        op: the digital product ``op(x, w, bias)`` (conv, linear, matmul).
        engine: ``engine(x_int, weights)``: the macro's accumulator (``weights`` the
            programmed array, or the integer operand).
        macro, signed: the matmul's macro and input signedness (default: the layer's).
        sub: which programmed weight of the layer (static weights).
        add_bias: ``add_bias(y, bias)`` outside ``train``.
        trim: the noise-aware-training perturbation (default: the layer's ``trim_noise``).
    """

    x: Tensor
    w: Tensor
    bias: Tensor | None
    op: Callable[[Tensor, Tensor, Tensor | None], Tensor]
    engine: Callable[[Tensor, object], Tensor]
    layout: Callable[[Tensor], Tensor] | None = None
    macro: MacroConfig | None = None
    signed: bool | None = None
    sub: int = 0
    add_bias: Callable[[Tensor, Tensor], Tensor] = operator.add
    trim: Callable[[Tensor], Tensor] | None = None


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not valid; choose one of {', '.join(MODES)}")
    return mode


class ACiMLayer:
    """Mixin for layers that run on an ACiM macro; put it before the torch class.

    Attributes:
        macro: the :class:`MacroConfig` the layer maps to.
        noise: the :class:`NoiseConfig` of its read-out (None: noise-free).
        signed_input: whether activations are quantized signed (else unsigned, ReLU-like).
        mode: ``"train"``, ``"inference"`` or ``"simulate"``; switchable at any time.
        trim_noise: multiplicative output noise for noise-aware training, in % (spec §1.6).
        digital: an always-digital layer (the reference's ``QuantConv2d``): fake-quantized
            in every mode and never simulated; :func:`asim.set_mode` leaves it alone.
        adc_ranges: each ADC's own calibrated full scale for the layer's weight matmul
            (:class:`asim.ColumnRanges`, spec §4.8), or None; set by
            :meth:`asim.Calibration.apply` with ``granularity="column"``.
    """

    noise: NoiseConfig | None

    @property
    def macro(self) -> MacroConfig:
        return self._macro

    @macro.setter
    def macro(self, value: MacroConfig) -> None:
        if not isinstance(value, MacroConfig):
            raise TypeError(f"macro must be an asim.MacroConfig, got {type(value).__name__}")
        self._validate_macro(value)
        self._macro = value

    def _validate_macro(self, macro: MacroConfig) -> None:
        """Layer-specific checks of a macro (raise ValueError); run whenever it is set."""
        self._check_encoding(macro, getattr(self, "signed_input", False))

    def _init_acim(
        self,
        macro: MacroConfig | None,
        noise: NoiseConfig | None,
        signed_input: bool,
        mode: str,
        trim_noise: float,
        digital: bool,
    ) -> None:
        if macro is not None and not isinstance(macro, MacroConfig):
            raise TypeError(f"macro must be an asim.MacroConfig, got {type(macro).__name__}")
        if noise is not None and not isinstance(noise, NoiseConfig):
            raise TypeError(f"noise must be an asim.NoiseConfig, got {type(noise).__name__}")
        if trim_noise < 0:
            raise ValueError(f"trim_noise={trim_noise} must be >= 0 (percent)")
        self.signed_input = bool(signed_input)
        self.macro = macro if macro is not None else MacroConfig()
        self.noise = noise
        self._mode = _check_mode(mode)
        self.trim_noise = float(trim_noise)
        self.digital = bool(digital)
        self.noise_seed: int | None = None
        self._generators: dict[torch.device, torch.Generator] = {}
        self._warned: set[str] = set()
        self._chip_cells: Tensor | None = None
        self._chip_key: int | None = None  # unseeded layers: their fixed pattern's chip (§4.7)
        self.chip_layer = 0  # the layer's position in its model (asim.resample_noise sets it)
        self._sample_index: Tensor | None = None  # set_sample_index
        self._rows_seen = 0  # default sample index of the next batch's first row
        self._calls = 0  # forward calls since the last reseed
        self._programs: dict = {}  # sub -> (float copy, w_int, w_scale, ProgrammedArray)
        self._compiled: dict = {}  # sub -> (key, Program)
        self.adc_ranges = None  # per-ADC full scales of engine call 0 (spec §4.8), calibrated

    @staticmethod
    def _check_encoding(macro: MacroConfig, signed: bool, what: str = "input") -> None:
        enc = macro.input_enc_bits
        if signed and enc is not None and enc >= macro.input_bits:
            raise ValueError(
                f"MacroConfig.input_enc_bits={enc} must be < input_bits="
                f"{macro.input_bits} for a signed {what} (the sign plane takes its "
                "own cycle)"
            )
        if signed and macro.weight_parallel:
            raise ValueError(
                f"MacroConfig.weight_parallel=true needs an unsigned {what}; set "
                "signed_input=False or weight_parallel=false"
            )

    # ---------------------------------------------------------------- mode and randomness
    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        self._mode = _check_mode(value)

    def generator(self, device: torch.device) -> torch.Generator | None:
        """The layer's noise stream on ``device`` (None: torch's global RNG)."""
        if self.noise_seed is None:
            return None
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.noise_seed)
        return self._generators[device]

    def reseed(self, seed: int | None) -> None:
        """Restart the noise stream from ``seed`` and draw a new chip (cell variation)."""
        self.noise_seed = seed
        self._generators = {}
        self._chip_cells = None
        self._chip_key = None
        self._rows_seen = 0
        self._calls = 0

    def _layer_key(self) -> int | None:
        """The 64-bit key of this layer's chip (None: unseeded, torch's global RNG)."""
        return None if self.noise_seed is None else rng.layer_key(self.noise_seed, 0)

    def _pattern_key(self, noise: NoiseConfig | None, sub: int) -> int | None:
        """The chip key of engine call ``sub``'s fixed column pattern (spec §4.7): from
        ``noise.chip_seed`` and the layer's position (:attr:`chip_layer`), else from the
        layer's noise seed; an unseeded layer draws one chip and keeps it until reseeded."""
        if noise is None or not noise.fixed_pattern:
            return None
        if noise.chip_seed is not None:
            base = rng.layer_key(noise.chip_seed, getattr(self, "chip_layer", 0))
        else:
            base = self._layer_key()
            if base is None:
                if getattr(self, "_chip_key", None) is None:
                    self._chip_key = int(torch.randint(0, 2**63 - 1, (1,)).item())
                base = self._chip_key
        return rng.sub_key(rng.sub_key(base, _PATTERN_SUB), sub)

    def _batch_samples(self, batch: int, device) -> Tensor:
        """Global sample index of each of this forward's ``batch`` rows: the one given by
        :func:`set_sample_index`, else (seeded layers) the rows seen since the last reseed,
        so consecutive batches of one pass get consecutive indices."""
        self._calls += 1
        idx = self._sample_index
        if idx is not None:
            if idx.numel() != batch:
                raise ValueError(
                    f"{type(self).__name__}: set_sample_index gave {idx.numel()} sample "
                    f"indices for a batch of {batch}; call asim.set_sample_index(model, "
                    "indices) with one index per batch row before each forward"
                )
            return idx.to(device)
        start = self._rows_seen if self.noise_seed is not None else 0
        self._rows_seen += batch
        return torch.arange(start, start + batch, dtype=torch.int64, device=device)

    def _stream(self, samples: Tensor, rows_per_sample: int, sub: int = 0) -> NoiseStream:
        """The noise stream of engine call ``sub`` of this forward (distinct per sub)."""
        key = self._layer_key()
        if key is None:  # unseeded: a fresh key from torch's global RNG per call
            key = int(torch.randint(0, 2**63 - 1, (1,)).item())
        else:
            key = rng.sub_key(key, sub)
        return NoiseStream(key, samples, rows_per_sample)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=3)

    # ---------------------------------------------------------------- quantization helpers
    @property
    def _per_sample(self) -> bool:
        return self.macro.act_scale == ActScale.sample

    def _input_levels(self, macro: MacroConfig | None = None, signed: bool | None = None) -> int:
        macro = macro or self.macro
        signed = self.signed_input if signed is None else signed
        return signed_levels(macro.input_bits) if signed else unsigned_levels(macro.input_bits)

    def _quantize_input(
        self, x: Tensor, macro: MacroConfig | None = None, signed: bool | None = None
    ) -> tuple[Tensor, Tensor]:
        """Integer codes and a scale that broadcasts against the layer output."""
        macro = macro or self.macro
        signed = self.signed_input if signed is None else signed
        if not signed and self._mode == "simulate" and "neg" not in self._warned:
            if bool(x.detach().amin() < 0):  # one reduction: ~10x faster than (x < 0).any()
                self._warn_once(
                    "neg",
                    f"{type(self).__name__} got negative inputs with "
                    "signed_input=False: they are quantized to 0 (reference "
                    "behaviour); pass signed_input=True if that is not intended",
                )
        scale = tensor_scale(x, signed, self._per_sample)
        return quantize(x, macro.input_bits, scale, signed), scale

    def _quantize_weight(self, w: Tensor | None = None) -> tuple[Tensor, Tensor]:
        w = self.weight if w is None else w
        scale = tensor_scale(w, signed=True)
        return quantize(w, self.macro.weight_bits, scale, signed=True), scale

    def _trim(self, y: Tensor) -> Tensor:
        """``y + z * (tau * y)``, fresh z per element (spec §1.6); gradients not detached."""
        if self.trim_noise <= 0:
            return y
        z = torch.randn(y.shape, dtype=y.dtype, device=y.device, generator=self.generator(y.device))
        return y + z * (self.trim_noise / 100.0 * y)

    def _cell_noise(self, rows: int, cols: int, device) -> Tensor | None:
        """Per-bit weight-cell deviation ``[R, w, O]`` for a weight laid out ``[R, O]``,
        from the counter-based stream (a Gaussian: these counts are not integers)."""
        noise = self.noise
        if noise is None or noise.cell_sigma == 0:
            return None
        shape = (rows, self.macro.weight_bits, cols)
        per_chip = noise.cell_variation == CellVariation.per_chip
        if per_chip and self._chip_cells is not None and self._chip_cells.shape == shape:
            return self._chip_cells.to(device)
        key = self._layer_key()
        if key is None:
            key = int(torch.randint(0, 2**63 - 1, (1,)).item())
        else:
            key = rng.sub_key(rng.sub_key(key, _CELL_SUB), 0 if per_chip else self._calls)
        r, i, o = (torch.arange(n, dtype=torch.int64, device=device) for n in shape)
        keys = rng.element_keys(key, r.view(-1, 1, 1), i.view(1, -1, 1), o.view(1, 1, -1))
        cells = rng.normal_from(keys, 0) * (noise.cell_sigma / 100)
        if per_chip:
            self._chip_cells = cells
        return cells

    def _programmed(self, weight: Tensor, sub: int, layout) -> tuple[Tensor, Tensor, object]:
        """``(w_int, w_scale, ProgrammedArray of layout(w_int))`` of ``weight``, quantized
        and packed once per weight change: the cached copy is reused only while the float
        weight is unchanged (:func:`_same_values`; in-place edits included)."""
        w = weight.detach()
        bits = self.macro.weight_bits
        hit = self._programs.get(sub)
        if hit is not None and hit[4] == bits and _same_values(hit[0], w):
            return hit[1], hit[2], hit[3]
        w_int, w_scale = self._quantize_weight(w)
        prog = ProgrammedArray(layout(w_int))
        self._programs[sub] = (w.clone(), w_int, w_scale, prog, bits)
        return w_int, w_scale, prog

    def _program(
        self,
        sub: int,
        rows: int,
        outputs: int,
        tiles=None,
        macro: MacroConfig | None = None,
        noise: NoiseConfig | None = None,
        signed: bool | None = None,
    ) -> Program:
        """The compiled macro program of engine call ``sub`` (kept by the layer; rebuilt
        only when its macro, noise (or the noise file's contents), signedness, tiles or shape
        change). Engine call 0 on the layer's own macro converts with the layer's per-ADC
        full scales :attr:`adc_ranges` (spec §4.8; set by ``Calibration.apply``)."""
        ranges = getattr(self, "adc_ranges", None) if sub == 0 and macro is None else None
        macro = macro or self.macro
        noise = self.noise if noise is None else noise
        signed = self.signed_input if signed is None else signed
        chip = self._pattern_key(noise, sub)
        key = (macro, noise, signed, rows, outputs, tiles, file_version(noise), chip, ranges)
        hit = self._compiled.get(sub)
        if hit is not None and hit[0] == key:
            return hit[1]
        if tiles is None:
            tiles = [(s, min(s + macro.nrow, rows)) for s in range(0, rows, macro.nrow)]
        program = compile_program(macro, noise, signed, tiles, outputs, chip, ranges)
        self._compiled[sub] = (key, program)
        return program

    def _mvm(
        self,
        x_int: Tensor,
        w_int: Tensor,
        tiles=None,
        macro: MacroConfig | None = None,
        noise: NoiseConfig | None = None,
        signed: bool | None = None,
        cell_noise: Tensor | None = None,
        stream: NoiseStream | None = None,
        out: Tensor | None = None,
    ) -> Tensor:
        """Run the engine: ``x_int [..., M, R] @ w_int [R, O]`` on this layer's macro (or
        ``macro``), into ``out`` when given (see :func:`acim_matmul`); its program comes from
        the engine's cache (layers of this package keep theirs, :meth:`_program`)."""
        return acim_matmul(
            x_int,
            w_int,
            macro=macro or self.macro,
            signed_input=self.signed_input if signed is None else signed,
            tiles=tiles,
            noise=self.noise if noise is None else noise,
            stream=stream,
            cell_noise=cell_noise,
            out=out,
        )

    def _run(self, mm: Lowered) -> Tensor:
        """The layer's one forward: ``mm`` in the layer's mode (see :class:`Lowered`)."""
        macro = mm.macro or self.macro
        signed = self.signed_input if mm.signed is None else mm.signed
        trim = mm.trim or self._trim
        dynamic = mm.layout is None
        per_sample = self._per_sample
        if self.digital or self._mode == "train":
            x = fake_quantize(mm.x, macro.input_bits, signed, per_sample)
            w = fake_quantize(mm.w, macro.weight_bits, True, per_sample and dynamic)
            y = mm.op(x, w, mm.bias)
            return y if self.digital else trim(y)
        with torch.no_grad():
            x_int, x_scale = self._quantize_input(mm.x, macro, signed)
            if dynamic:
                w_scale = tensor_scale(mm.w, True, per_sample)
                w_int = weights = quantize(mm.w, macro.weight_bits, w_scale, True)
            else:
                w_int, w_scale, weights = self._programmed(mm.w, mm.sub, mm.layout)
            if self._mode == "inference":
                acc = trim(mm.op(x_int, w_int, None))
            else:
                acc = mm.engine(x_int, weights)
            y = dequantize(
                acc,
                w_scale,
                x_scale,
                signed_levels(macro.weight_bits),
                self._input_levels(macro, signed),
                macro.division == Division.reciprocal,
                in_place=True,
            )
        return y if mm.bias is None else mm.add_bias(y, mm.bias)

    def _linear(
        self,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        sub: int = 0,
        samples: Tensor | None = None,
    ) -> Tensor:
        """``x @ weight.T + bias`` in the layer's mode; any number of leading dims (Q15).
        ``sub`` numbers the engine calls of one forward; ``samples`` the batch's sample
        indices (default: :meth:`_batch_samples` of dim 0)."""
        return self._run(self._lower_linear(x, weight, bias, sub, samples))

    def _lower_linear(self, x, weight, bias, sub: int = 0, samples=None) -> Lowered:
        """The matmul of a linear: ``x [..., R] @ weight.T`` on the layer's macro."""
        R, O = weight.shape[1], weight.shape[0]

        def engine(x_int: Tensor, prog) -> Tensor:
            batch = x.shape[0] if x.dim() > 1 else 1
            idx = self._batch_samples(batch, x.device) if samples is None else samples
            rows = x_int.reshape(-1, R)
            acc = acim_matmul(
                rows,
                prog,
                program=self._program(sub, R, O),
                cell_noise=self._cell_noise(R, O, x.device),
                stream=self._stream(idx, rows.shape[0] // max(batch, 1), sub),
            )
            return acc.reshape(*x.shape[:-1], O)

        return Lowered(
            x, weight, bias, torch.nn.functional.linear, engine, layout=_transpose, sub=sub
        )

    def acim_repr(self) -> str:
        parts = [
            f"macro={self.macro.describe()}",
            f"mode={self._mode}",
            f"signed_input={self.signed_input}",
        ]
        if self.noise is not None and (
            self.noise.enabled or self.noise.cell_sigma or self.noise.compression_alpha
        ):
            n = self.noise
            parts.append(
                "noise="
                + (
                    f"histogram({n.histogram})"
                    if n.histogram
                    else f"table({n.file})"
                    if n.file
                    else f"(rand={n.rand_sigma_lsb:g} LSB, nl={n.nonlinear_sigma_lsb:g} LSB)"
                    if n.rand_sigma_lsb or n.nonlinear_sigma_lsb
                    else f"(rand={n.rand_sigma:g}%, nl={n.nonlinear_sigma:g}%)"
                )
            )
        ranges = getattr(self, "adc_ranges", None)
        if ranges is not None:  # per-ADC full scales (spec §4.8)
            flat = [v for row in ranges.full_scale for v in row]
            parts.append(f"adc_ranges={min(flat)}..{max(flat)} ({len(flat)} ADCs)")
        if self.trim_noise:
            parts.append(f"trim_noise={self.trim_noise:g}%")
        if self.digital:
            parts.append("digital")
        return ", ".join(parts)


def _libc_memcmp():
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or None).memcmp
    except (OSError, AttributeError):
        return None
    fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    return fn


_MEMCMP = _libc_memcmp()


def _same_values(old: Tensor, new: Tensor) -> bool:
    """Whether ``new`` holds what ``old`` (the programmed copy) holds: same shape, dtype and
    device, and the same values. On the CPU the bytes are compared (``memcmp``, several
    times faster than ``torch.equal`` on a large weight, which this runs every forward); a
    -0/+0 or NaN difference then counts as a change, which only reprograms."""
    if old.shape != new.shape or old.dtype != new.dtype or old.device != new.device:
        return False
    if (
        _MEMCMP is not None
        and new.device.type == "cpu"
        and old.is_contiguous()
        and new.is_contiguous()
    ):
        n = new.numel() * new.element_size()
        return n == 0 or _MEMCMP(old.data_ptr(), new.data_ptr(), n) == 0
    return torch.equal(old, new)


_CELL_SUB = 1 << 20  # sub-key of the cell-variation stream (engine calls use small subs)
_PATTERN_SUB = (1 << 20) + 1  # sub-key of the fixed column pattern (spec §4.7)


def _transpose(w_int: Tensor) -> Tensor:
    """A linear's ``[O, R]`` weight codes laid out ``[R, O]`` for the array."""
    return w_int.t()


class _SampleIndexScope:
    """Returned by :func:`set_sample_index`; as a context manager it restores the previous
    indices on exit."""

    def __init__(self, saved: list[tuple[ACiMLayer, Tensor | None]]):
        self._saved = saved

    def __enter__(self) -> _SampleIndexScope:
        return self

    def __exit__(self, *exc) -> None:
        for layer, idx in self._saved:
            layer._sample_index = idx


def set_sample_index(model: nn.Module, index) -> _SampleIndexScope:
    """Tell every ACiM layer of ``model`` the global dataset index of each row of the next
    batches (one int per batch row; ``None`` returns to the default).

    The noise of a sample then depends only on (seed, layer, sample index), not on which
    other samples share its batch or process: with ``macro.act_scale="sample"``, results
    are identical for any batch size and number of DDP processes. Without it, a seeded
    layer numbers rows consecutively from its last :func:`asim.resample_noise`. Use it
    once per batch, or as a context manager::

        with asim.set_sample_index(model, batch_indices):
            logits = model(x)
    """
    if index is not None:
        index = torch.as_tensor(index, dtype=torch.int64).reshape(-1)
        if bool((index < 0).any()):
            raise ValueError("set_sample_index: sample indices must be >= 0 (dataset indices)")
    saved = []
    for module in model.modules():
        if isinstance(module, ACiMLayer):
            saved.append((module, module._sample_index))
            module._sample_index = index
    return _SampleIndexScope(saved)
