"""Read-out noise models (spec §4.1): what is added to a normalised column value before the ADC.

A model answers one question for the engine: for partial sums whose ideal per-level column
count is ``m`` (``m = M`` bit-serial, ``M_c / (2^width - 1)`` bit-parallel, spec Q11), what
offset and standard deviation, in units of the ADC full scale, does the analog read-out add?

* :class:`GaussianNoise` is the reference's model: ``N(0, (rand/100)^2 + (nl/100)^2/(m+1))``.
  The reference draws two Gaussians; their sum is one Gaussian with the summed variance, so
  the engine draws one per partial sum (same distribution, half the random numbers).
* :class:`TableNoise` is a measured characterisation: a CSV with, per ideal column count, the
  mean offset and standard deviation of the read-out in ADC LSB (what a silicon or SPICE
  sweep of one column gives). Counts in between are linearly interpolated.
"""

from __future__ import annotations

import csv
import functools
import math
from pathlib import Path

import torch
from torch import Tensor

from .config import NoiseConfig

__all__ = ["GaussianNoise", "ReadoutNoise", "TableNoise", "build_noise"]


class ReadoutNoise:
    """Base class: offset and sigma as functions of the per-level column count."""

    def constant_sigma(self, adc_levels: int) -> float | None:
        """The sigma if it does not depend on the count, else None."""
        return None

    def moments(self, level_count: Tensor, adc_levels: int) -> tuple[Tensor | None, Tensor]:
        """Offset (or None) and sigma, normalised to full scale, for each element."""
        raise NotImplementedError


class GaussianNoise(ReadoutNoise):
    """The reference's random + count-dependent ("non-linear") Gaussian noise.

    Args:
        rand_sigma: signal-independent sigma, % of full scale.
        nonlinear_sigma: sigma at count 0, % of full scale, shrinking as 1/sqrt(count+1).
    """

    def __init__(self, rand_sigma: float = 0.0, nonlinear_sigma: float = 0.0):
        self.rand_var = (rand_sigma / 100.0) ** 2
        self.nl_var = (nonlinear_sigma / 100.0) ** 2

    def constant_sigma(self, adc_levels: int) -> float | None:
        return math.sqrt(self.rand_var) if self.nl_var == 0 else None

    def moments(self, level_count: Tensor, adc_levels: int) -> tuple[None, Tensor]:
        var = (level_count + 1.0).reciprocal_().mul_(self.nl_var).add_(self.rand_var)
        return None, var.sqrt_()

    def __repr__(self) -> str:
        return (
            f"GaussianNoise(rand_sigma={100 * math.sqrt(self.rand_var):g}%, "
            f"nonlinear_sigma={100 * math.sqrt(self.nl_var):g}%)"
        )


class TableNoise(ReadoutNoise):
    """Measured read-out noise per ideal column count, in ADC LSB.

    Args:
        counts: ideal column counts at which the read-out was measured (ascending).
        offset: mean of (measured code - ideal code) at each count, LSB.
        std: standard deviation of the measured code at each count, LSB.
        source: where the numbers came from (shown in ``repr``).
    """

    def __init__(self, counts, offset, std, source: str = "table"):
        self.counts = torch.as_tensor(counts, dtype=torch.float32)
        self.offset = torch.as_tensor(offset, dtype=torch.float32)
        self.std = torch.as_tensor(std, dtype=torch.float32)
        self.source = source
        n = self.counts.numel()
        if n == 0 or self.offset.numel() != n or self.std.numel() != n:
            raise ValueError(f"noise table {source}: needs >= 1 row with count, offset and std")
        if bool((self.counts[1:] <= self.counts[:-1]).any()):
            raise ValueError(f"noise table {source}: counts must be strictly increasing")
        if bool((self.std < 0).any()):
            raise ValueError(f"noise table {source}: std must be >= 0")

    @classmethod
    def from_csv(cls, path: str | Path) -> TableNoise:
        """Read a CSV with header ``count,offset,std`` (``#`` lines are comments)."""
        return _load_table(str(Path(path).expanduser().resolve()))

    def _interp(self, values: Tensor, level_count: Tensor) -> Tensor:
        counts = self.counts.to(level_count.device)
        values = values.to(level_count.device)
        if counts.numel() == 1:
            return values.expand_as(level_count).clone()
        m = level_count.clamp(counts[0], counts[-1])
        hi = torch.searchsorted(counts, m.contiguous()).clamp_(1, counts.numel() - 1)
        lo = hi - 1
        c_lo, c_hi = counts[lo], counts[hi]
        frac = (m - c_lo) / (c_hi - c_lo)
        return torch.lerp(values[lo], values[hi], frac)

    def moments(self, level_count: Tensor, adc_levels: int) -> tuple[Tensor, Tensor]:
        offset = self._interp(self.offset, level_count).div_(adc_levels)
        std = self._interp(self.std, level_count).div_(adc_levels)
        return offset, std

    def __repr__(self) -> str:
        return f"TableNoise({self.source}, {self.counts.numel()} counts)"


@functools.lru_cache(maxsize=16)
def _load_table(path: str) -> TableNoise:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"noise table not found: {p}; set noise.file=PATH to a CSV "
            "with columns count,offset,std (ADC LSB per ideal count)"
        )
    with p.open(newline="") as fh:
        rows = [line for line in fh if line.strip() and not line.lstrip().startswith("#")]
    reader = csv.DictReader(rows)
    need = {"count", "offset", "std"}
    if reader.fieldnames is None or not need <= {f.strip() for f in reader.fieldnames}:
        raise ValueError(
            f"noise table {p}: header must contain count,offset,std (found {reader.fieldnames})"
        )
    counts, offset, std = [], [], []
    for i, row in enumerate(reader, start=2):
        row = {k.strip(): v for k, v in row.items() if k is not None}
        try:
            counts.append(float(row["count"]))
            offset.append(float(row["offset"]))
            std.append(float(row["std"]))
        except (TypeError, ValueError):
            raise ValueError(f"noise table {p}: row {i} is not numeric: {row}") from None
    return TableNoise(counts, offset, std, source=str(p))


def build_noise(cfg: NoiseConfig | None) -> ReadoutNoise | None:
    """The read-out noise model a :class:`NoiseConfig` describes, or None when it is off."""
    if cfg is None:
        return None
    if cfg.file is not None:
        return TableNoise.from_csv(cfg.file)
    if cfg.rand_sigma > 0 or cfg.nonlinear_sigma > 0:
        return GaussianNoise(cfg.rand_sigma, cfg.nonlinear_sigma)
    return None
