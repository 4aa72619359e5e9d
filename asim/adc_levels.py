"""Non-uniform ADC levels (spec §4.6): a table of decision thresholds and output levels.

An ADC of ``b`` bits has ``A = 2^b - 1`` decision thresholds ``θ_1 < ... < θ_A`` and
``A + 1`` output levels ``v_0 .. v_A``, all fractions of the cycle's full scale. A user
writes them by hand, from a measured transfer curve, or from a fit (Lloyd-Max), as a CSV::

    # asim ADC levels (spec §4.6): code k reads value; threshold = where code k starts
    code,threshold,value
    0,,0.0
    1,0.0714285714,0.1428571429
    ...

one row per code ``k = 0 .. A`` in order: ``threshold`` is ``θ_k``, the fraction of full
scale at which the output steps from code ``k - 1`` up to ``k`` (empty for code 0), and
``value`` the output level ``v_k``. ``#`` lines are comments. :func:`read_adc_levels` reads
it, :func:`write_adc_levels` writes it, and ``MacroConfig(adc_levels_csv=PATH)`` (Hydra:
``macro.adc_levels_csv=PATH``) uses it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

__all__ = ["check_levels", "read_adc_levels", "uniform_levels", "write_adc_levels"]

HEADER = ("code", "threshold", "value")


def uniform_levels(adc_bits: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The plain ADC's levels as a table: ``θ_k = (k - 1/2) / A``, ``v_k = k / A``. Given to
    :class:`~asim.MacroConfig` they convert bit-identically to the plain ADC (§4.6)."""
    a = (1 << adc_bits) - 1
    return tuple((k - 0.5) / a for k in range(1, a + 1)), tuple(k / a for k in range(a + 1))


def check_levels(
    thresholds: Sequence[float], values: Sequence[float], adc_bits: int, where: str
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(thresholds, values)`` as tuples of floats, or a one-line ValueError naming the fix:
    ``2^adc_bits - 1`` finite thresholds strictly ascending inside (0, 1), ``2^adc_bits``
    finite values >= 0."""
    a = (1 << adc_bits) - 1
    try:
        t = tuple(float(x) for x in thresholds)
        v = tuple(float(x) for x in values)
    except (TypeError, ValueError):
        raise ValueError(
            f"{where}: adc_thresholds and adc_values must be lists of numbers"
        ) from None
    if len(t) != a or len(v) != a + 1:
        raise ValueError(
            f"{where}: an adc_bits={adc_bits} ADC needs {a} thresholds and {a + 1} values, got "
            f"{len(t)} and {len(v)}; give one level per code or change adc_bits"
        )
    if not all(math.isfinite(x) and 0 < x < 1 for x in t):
        raise ValueError(
            f"{where}: every ADC threshold must be a fraction of full scale strictly inside (0, 1)"
        )
    if any(b <= a_ for a_, b in zip(t, t[1:], strict=False)):
        raise ValueError(f"{where}: ADC thresholds must be strictly ascending")
    if not all(math.isfinite(x) and x >= 0 for x in v):
        raise ValueError(f"{where}: every ADC value must be a finite fraction of full scale >= 0")
    return t, v


def read_adc_levels(path: str | Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(thresholds, values)`` from a levels CSV (module docstring); a malformed file fails
    with one line naming the file, the line and the fix."""
    from .noise import _number, _read_rows  # the one CSV reader of measured data

    p = Path(path).expanduser()
    what = "ADC levels"
    rows = _read_rows(p, HEADER, what, "macro.adc_levels_csv")
    thresholds, values = [], []
    for k, (no, row) in enumerate(rows):
        code = _number(p, what, no, "code", row["code"])
        if code != k:
            raise ValueError(
                f"{what} {p}, line {no}: code {row['code']} where {k} was expected; list "
                "codes 0, 1, 2, ... in order, one row each"
            )
        if k == 0:
            if row["threshold"] not in ("", "-"):
                raise ValueError(f"{what} {p}, line {no}: code 0 has no threshold; leave it empty")
        else:
            thresholds.append(_number(p, what, no, "threshold", row["threshold"]))
        values.append(_number(p, what, no, "value", row["value"]))
    n = len(values)
    bits = n.bit_length() - 1
    if n < 2 or n != 1 << bits:
        raise ValueError(
            f"{what} {p}: {n} codes; an ADC of b bits has 2^b codes (2, 4, 8, ...): add or "
            "remove rows"
        )
    try:
        return check_levels(thresholds, values, bits, f"{what} {p}")
    except ValueError as e:
        raise ValueError(str(e)) from None


def write_adc_levels(
    path: str | Path, thresholds: Sequence[float], values: Sequence[float]
) -> Path:
    """Write a levels CSV that :func:`read_adc_levels` reads back exactly (``repr`` floats)."""
    n = len(values)
    bits = max(1, n.bit_length() - 1)
    t, v = check_levels(thresholds, values, bits, "write_adc_levels")
    p = Path(path)
    lines = [
        "# asim ADC levels (spec §4.6): code k reads value; threshold = where code k starts",
        ",".join(HEADER),
        f"0,,{v[0]!r}",
    ]
    lines += [f"{k},{t[k - 1]!r},{v[k]!r}" for k in range(1, len(v))]
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p
