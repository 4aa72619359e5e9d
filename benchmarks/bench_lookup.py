"""The cost of one noisy code lookup, alone: why a chip's fixed pattern costs what it costs.

A chip's fixed pattern (spec §4.7) draws codes from a table with a row per fine index, 16 per
count, where the plain Gaussian noise has a row per count. This times the kernel's lookup (one
gather from the bucket re-indexing, ``engine.h`` ``asim_bucket_table``) on the real tables of
``benchmarks/bench_engine.py``'s ``noise`` and ``chip`` settings, over 2^22 draws whose counts
follow a geometric distribution (mean 4, 12 or 30) and whose fine phase is uniform:

* ``noise``: the Gaussian table, a row per count (the kernel today);
* ``chip``: the chip's fine table, a row per fine index (the kernel today);
* ``chip, N rows per count``: the same table read at N of its 16 fine rows per count (wrong
  codes: the cost of the lookup with the footprint of a grid of 1/N count);
* ``chip, entries rel 8`` / ``rel 7``: a smaller re-indexing of the same table (2^8 or 2^7
  buckets per row, the code stored relative to the row's lowest, one more gather for it),
  giving the same codes (checked by the checksum);
* ``chip, 16-bit entries``: 2^8 or 2^9 buckets per row in 16 bits each (the code relative to
  a base computed from the row, no second gather; where a threshold's top 8 bits inside the
  bucket do not settle the code, the row's thresholds are counted), the same codes;
* ``noise`` / ``chip, 16-bit entries, absolute codes``: 2^9 buckets per row in 16 bits each
  (the code itself and the top 7 bits of a lone threshold's offset in the bucket; the draws
  they do not settle count the row's thresholds), the same codes;
* ``chip noise per count on the fine grid``: a model the engine does not have (the noise drawn
  per count as an offset in fine steps, 2^12 buckets per row), its lookup only.

    python benchmarks/bench_lookup.py        # needs gcc and AVX2

Prints ns per draw (thread CPU, best of 7 passes) per count mean. Single-threaded C built
from ``benchmarks/bench_lookup.c`` with ``-O2 -mavx2``.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from asim.engine.native import _as_i32, _small_buckets, bucket_table  # noqa: E402
from asim.engine.plan import build_plan  # noqa: E402
from benchmarks.bench_engine import SETTINGS  # noqa: E402

MEANS = (4, 12, 30)


def _write(folder: Path, arrays: dict[str, torch.Tensor]) -> Path:
    folder.mkdir()
    for name, t in arrays.items():
        t = t if t.dtype == torch.int16 else t.to(torch.int32)
        t.numpy().tofile(folder / f"{name}.bin")
    return folder


def _geometry(table, bits: int):
    """Per row and bucket (the top ``bits`` bits of ``u``, :meth:`CodeTable.bucket_search`):
    the bucket's start ``lo``, the index ``at`` of the first threshold above it, how many
    thresholds fall ``inside`` it, that first threshold, and the code at the bucket's start
    minus the row's lowest code."""
    parts = list(table.bucket_search(bits))
    at = torch.cat([p[2] for p in parts])
    inside = torch.cat([p[3] for p in parts])
    lo = torch.arange(1 << bits, dtype=torch.int64).view(1, -1) << (32 - bits)
    first = table.thr[at.clamp(max=table.thr.numel() - 1)]
    return lo, at, inside, first, at - table.start[:-1].long().view(-1, 1)


def _short(entry: torch.Tensor, table) -> dict[str, torch.Tensor]:
    """16-bit entries and what their rare unsettled draws count: the row's thresholds."""
    return {"entry": torch.where(entry >= 1 << 15, entry - (1 << 16), entry).to(torch.int16),
            "thr": _as_i32(table.thr), "klo": table.k_lo, "start": table.start}  # fmt: skip


def _relative(table, bits: int) -> dict[str, torch.Tensor]:
    """The table's buckets with ``2^bits`` per row and the code relative to ``k_lo[row]``:
    entry = code - k_lo | d << (bits - 1), d as in the kernel's format (33 - bits bits)."""
    low, cb = 32 - bits, bits - 1
    lo, at, inside, first, rel = _geometry(table, bits)
    if int(rel.max()) >= 1 << cb:
        raise SystemExit(f"rows too wide for {bits} bucket bits")
    d = torch.where(inside == 1, first - lo, torch.where(inside == 0, 1 << low, 0))
    scan = torch.where(inside > 1, at | (inside << 25), 0)
    return {"entry": _as_i32(rel | (d << cb)), "scan": scan, "thr": _as_i32(table.thr),
            "klo": table.k_lo}  # fmt: skip


def _e16(table, bits: int, rows_per_code: float) -> tuple[dict[str, torch.Tensor], int, int]:
    """The table's buckets in 16 bits (bench_lookup.c FORMAT e16): code - base(row) in 6 bits,
    the bucket's kind (0, 1 or several thresholds) in 2, the top 8 bits of a lone threshold's
    offset in the bucket in 8; base(row) = ((row * M) >> 16) - H, M from the rows per code."""
    lo, _, inside, first, rel = _geometry(table, bits)
    code = table.k_lo.long().view(-1, 1) + rel
    M = round(65536 / rows_per_code)
    raw = (torch.arange(table.n_m) * M) >> 16
    H = int((raw - table.k_lo.long()).max())
    rel = code - (raw - H).view(-1, 1)
    if int(rel.max()) >= 64:
        raise SystemExit(f"codes too far from the computed base for 16-bit entries ({bits} bits)")
    dhi = torch.where(inside == 1, (first - lo) >> (24 - bits), 0)
    return _short(rel | inside.clamp(max=2) << 6 | dhi << 8, table), M, H


def _a16(table, bits: int) -> dict[str, torch.Tensor]:
    """The table's buckets in 16 bits (bench_lookup.c FORMAT a16): the code at the bucket's
    start, the top 7 bits of a lone threshold's offset in it (127: none), and an open bit
    (several thresholds, or a lone one whose top bits are 127)."""
    lo, _, inside, first, rel = _geometry(table, bits)
    code = table.k_lo.long().view(-1, 1) + rel
    dhi = torch.where(inside == 1, (first - lo) >> (25 - bits), 127)
    opened = (inside > 1) | ((inside == 1) & (dhi == 127))
    return _short(code | torch.where(opened, 0, dhi) << 8 | opened.long() << 15, table)


def _per_count(plan, c: int):
    """A model the engine does not have, for comparison: the chip's temporal noise drawn per
    count as an offset on the fine grid (``P(e = k) = Phi((k + 1/2) / s) - Phi((k - 1/2) / s)``,
    ``s`` the noise sigma at that count in fine steps), to be added to the fine index and
    converted by the noise-free ADC after the lookup (a further step not timed here)."""
    from asim.noise import _thresholds

    F, S, nrow = plan.full_scale[c], plan.fine, plan.macro.nrow
    m = torch.arange(F + 1, dtype=torch.float64)
    _, sigma = plan.readout.moments64(m.clamp(max=nrow), plan.macro.adc_levels)
    s = sigma * (nrow / plan.macro.adc_rows) * S * F  # full-scale units -> fine steps
    half = int(torch.ceil(7 * s.max()))
    k = torch.arange(-half, half + 1, dtype=torch.float64)
    cdf = torch.special.ndtr((k + 0.5) / s.unsqueeze(1))
    return _thresholds(torch.zeros(F + 1, dtype=torch.int64), cdf, 0, 2 * half)


def main() -> None:
    plain = build_plan(*SETTINGS["noise"], False)
    chip = build_plan(*SETTINGS["chip"], False)
    c = plain.ncyc - 1
    t_plain, t_fine = plain.code_table(c), chip.fine_code_table(c, ((1.0, 1.0),))
    b_plain, b_fine = bucket_table(t_plain), _small_buckets(t_fine)
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "bench_lookup"
        subprocess.run(["gcc", "-O2", "-mavx2", "-mfma", str(ROOT / "benchmarks/bench_lookup.c"),
                        "-o", str(exe), "-lm"], check=True)  # fmt: skip
        keep = ("entry", "scan", "thr")
        d_plain = _write(Path(tmp) / "plain", {k: b_plain[k] for k in keep})
        d_fine = _write(Path(tmp) / "fine", {k: b_fine[k] for k in keep})
        d_rel = {b: _write(Path(tmp) / f"rel{b}", _relative(t_fine, b)) for b in (8, 7)}
        t_count = _per_count(chip, c)
        d_count = _write(Path(tmp) / "count", _relative(t_count, 12))
        F, A = chip.full_scale[c], chip.macro.adc_levels
        e16 = {b: _e16(t_fine, b, chip.fine * F / A) for b in (8, 9)}
        d_e16 = {b: _write(Path(tmp) / f"e16_{b}", a) for b, (a, _, _) in e16.items()}
        d_a16 = {n: _write(Path(tmp) / f"a16_{n}", _a16(t, 9)) for n, t in
                 (("noise", t_plain), ("chip", t_fine))}  # fmt: skip
        S = chip.fine
        runs = [  # name, folder, format, bucket bits, rows per count, rows used, rows, (M, H)
            ("noise", d_plain, "abs", b_plain["bits"], 1, 1, t_plain.n_m, ()),
            ("chip", d_fine, "abs", b_fine["bits"], S, S, t_fine.n_m, ()),
            *((f"chip, {u} row{'s' * (u > 1)} per count", d_fine, "abs", b_fine["bits"], S, u,
               t_fine.n_m, ()) for u in (4, 1)),
            ("chip, entries rel 8", d_rel[8], "rel", 8, S, S, t_fine.n_m, ()),
            ("chip, entries rel 7", d_rel[7], "rel", 7, S, S, t_fine.n_m, ()),
            *((f"chip, 16-bit entries, computed base, 2^{b} buckets", d_e16[b], "e16", b, S, S,
               t_fine.n_m, e16[b][1:]) for b in (8, 9)),
            ("noise, 16-bit entries, absolute codes, 2^9 buckets", d_a16["noise"], "a16", 9, 1, 1,
             t_plain.n_m, ()),
            ("chip, 16-bit entries, absolute codes, 2^9 buckets", d_a16["chip"], "a16", 9, S, S,
             t_fine.n_m, ()),
            ("chip noise per count on the fine grid", d_count, "rel", 12, 1, 1, t_count.n_m, ()),
        ]  # fmt: skip
        print(f"rows: noise {t_plain.n_m} (counts), chip {t_fine.n_m} (fine indices), "
              f"per-count noise {t_count.n_m}; thresholds per row: noise "
              f"{t_plain.n_thresholds / t_plain.n_m:.1f}, chip "
              f"{t_fine.n_thresholds / t_fine.n_m:.1f}, per-count noise "
              f"{t_count.n_thresholds / t_count.n_m:.1f}")  # fmt: skip
        print("| lookup | " + " | ".join(f"count mean {m}" for m in MEANS) + " |")
        print("|---|" + "---:|" * len(MEANS))
        sums: dict[tuple[int, int], set] = {}
        for name, folder, fmt, bits, fine, use, n, base in runs:
            cells = []
            for mean in MEANS:
                argv = [str(exe), str(folder), fmt, *map(str, (bits, fine, use, mean, n, *base))]
                out = subprocess.run(argv, capture_output=True, text=True, check=True)
                ns, checksum = out.stdout.split()
                cells.append(f"{float(ns):.2f} ns")
                if name.startswith("chip") and use == 16:
                    sums.setdefault((fine, mean), set()).add(checksum)
            print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
        same = all(len(v) == 1 for v in sums.values())
        print("the chip's exact formats give the same codes:", "yes" if same else "NO")


if __name__ == "__main__":
    main()
