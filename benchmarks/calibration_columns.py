"""Seconds of per-ADC calibration (``asim.calibrate_adc(..., granularity="column")``).

One ``ACiMConv2d(256, 256, 3, padding=1)`` (``MacroConfig()`` defaults, noise
``rand_sigma=0.39, nonlinear_sigma=0.39``: one ADC per column, 20480 ADCs) calibrated per ADC
on a batch of 2 random ReLU inputs of 8x8, per method: the wall and this thread's CPU
seconds of ``calibrate_adc`` (observing the counts and fitting) and of the fit alone, and a
digest of the result (the per-ADC ranges and the layer's summary) to compare two versions of
asim. One torch thread by default (``--threads``), so the thread's CPU time is all the work
and stays put on a busy machine::

    python benchmarks/calibration_columns.py                  # max, percentile, mse
    PYTHONPATH=/path/to/other/checkout python benchmarks/calibration_columns.py --method mse
"""

from __future__ import annotations

import argparse
import hashlib
import time

import torch

import asim
from asim.calibrate import _fit_columns, observe_counts

COLUMN_METHODS = ("max", "percentile", "mse")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", choices=COLUMN_METHODS, action="append", help="default: all")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=8, help="input height and width")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    noise = asim.NoiseConfig(rand_sigma=0.39, nonlinear_sigma=0.39)
    layer = asim.ACiMConv2d(256, 256, 3, padding=1, macro=asim.MacroConfig(), noise=noise)
    x = torch.relu(torch.randn(args.batch, 256, args.size, args.size))
    print(f"asim from {asim.__file__}, {torch.get_num_threads()} torch threads")

    t0, c0 = time.perf_counter(), time.thread_time()
    hist = next(iter(observe_counts(layer, [x], columns=True)[0].values()))
    wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
    print(f"observing the counts per ADC: {wall:.2f} s wall, {cpu:.2f} s thread CPU")
    T, n_adc = next(iter(hist.columns.values())).shape[:2]
    print(f"{T} tiles x {n_adc} ADCs = {T * n_adc} ADCs, cycle widths {sorted(hist.columns)}")
    print("| method | calibrate_adc wall (s) | CPU (s) | fit alone wall (s) | CPU (s) | result |")
    print("|---|---:|---:|---:|---:|---|")
    for method in args.method or COLUMN_METHODS:
        w0, c0 = time.perf_counter(), time.thread_time()
        cal = asim.calibrate_adc(layer, [x], method=method, granularity="column")
        wall, cpu = time.perf_counter() - w0, time.thread_time() - c0
        w0, c0 = time.perf_counter(), time.thread_time()
        _fit_columns(hist, layer.macro, method, 99.99)
        fit, fit_cpu = time.perf_counter() - w0, time.thread_time() - c0
        lc = next(iter(cal.layers.values()))
        digest = hashlib.sha256(str(lc.column_full_scale).encode()).hexdigest()[:12]
        print(
            f"| {method} | {wall:.2f} | {cpu:.2f} | {fit:.2f} | {fit_cpu:.2f} | ranges {digest}, "
            f"full scale {lc.full_scale}, mse {lc.mse!r}, clip {lc.clip_rate!r}, "
            f"codes {sum(lc.code_histogram)} |"
        )


if __name__ == "__main__":
    main()
