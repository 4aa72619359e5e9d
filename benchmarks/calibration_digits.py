"""A calibrated ADC range on the digits default (issue 16, ``docs/calibration.md``).

The app's default run (``python simulate.py``: ``digits_cnn`` with the shipped
``checkpoints/digits_cnn.pt``, macro ``bitserial_255``, the 450 validation images) with a
6-bit ADC whose full scale is ``nrow`` (today's macro), the same ADC calibrated on training
images by each method of :func:`asim.calibrate_adc`, per layer and (``max``, ``percentile``,
``mse``) per ADC (``granularity="column"``, spec §4.8), and the lossless 8-bit ADC; one table
of simulated top-1 and seconds per pass::

    python benchmarks/calibration_digits.py                       # adc 6, 4 batches of 64
    python benchmarks/calibration_digits.py --adc 5 noise=gaussian noise.rand_sigma=0.2

Extra arguments are Hydra overrides of ``conf/simulate.yaml``. Calibration uses the first
``--batches`` training batches (the validation images are never seen). Noise, when set, is
seeded with ``seed`` (one draw per pass).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import asim  # noqa: E402
from lightning_modules.config import (  # noqa: E402
    build_datamodule,
    build_float_model,
    compose,
    convert_model,
    load_weights,
    macro_config,
)

METHODS = ("max", "percentile", "mse", "lloyd_max")
COLUMN_METHODS = ("max", "percentile", "mse")  # lloyd_max fits one table per layer


def top1(model, loader, seed: int) -> tuple[float, float]:
    asim.resample_noise(model, seed)
    t0, right, total = time.perf_counter(), 0, 0
    with torch.no_grad():
        for x, y in loader:
            right += int((model(x).argmax(-1) == y).sum())
            total += y.numel()
    return 100.0 * right / total, time.perf_counter() - t0


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--adc", type=int, default=6, help="ADC bits of the compared macro")
    p.add_argument("--batches", type=int, default=4, help="training batches to calibrate on")
    p.add_argument("--percentile", type=float, default=99.99)
    p.add_argument("overrides", nargs="*", help="Hydra overrides (conf/simulate.yaml)")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    def build(adc: int):
        cfg = compose("simulate", [*args.overrides, f"macro.adc_bits={adc}"])
        dm = build_datamodule(cfg)
        dm.setup("fit")
        float_model = build_float_model(cfg, dm)
        load_weights(float_model, cfg.ckpt, strict_classifier=True, dataset=cfg.dataset.name)
        model = convert_model(cfg, float_model, mode="simulate").eval()
        return cfg, dm, model

    rows = []
    cfg, dm, model = build(args.adc)
    seed = int(cfg.seed)
    val = dm.val_dataloader()
    acc, sec = top1(model, val, seed)
    rows.append((f"adc {args.adc}, full scale nrow", acc, sec, "-"))
    runs = [(m, "layer") for m in METHODS] + [(m, "column") for m in COLUMN_METHODS]
    for method, granularity in runs:
        _, _, model = build(args.adc)
        t0 = time.perf_counter()
        cal = asim.calibrate_adc(
            model,
            dm.train_dataloader(),
            method=method,
            percentile=args.percentile,
            granularity=granularity,
            max_batches=args.batches,
        )
        t_cal = time.perf_counter() - t0
        cal.apply(model)
        acc, sec = top1(model, val, seed)
        scales = sorted(
            {
                v
                for lc in cal.layers.values()
                for v in (
                    [lc.full_scale]
                    if lc.column_full_scale is None
                    else [x for row in lc.column_full_scale for x in row]
                )
            }
        )
        label = f"percentile {args.percentile:g}" if method == "percentile" else method
        per = "calibrated" if granularity == "layer" else "calibrated per ADC"
        rows.append(
            (
                f"adc {args.adc}, {per}: {label} ({t_cal:.1f} s)",
                acc,
                sec,
                f"{scales[0]}..{scales[-1]}",
            )
        )
    cfg8, _, model8 = build(8)
    acc, sec = top1(model8, val, seed)
    rows.append((f"adc 8, full scale nrow ({macro_config(cfg8).describe()})", acc, sec, "-"))

    print(f"digits_cnn, {len(val.dataset)} validation images, macro {macro_config(cfg).describe()}")
    print("| ADC | top-1 (%) | seconds | full scales (counts) |")
    print("|---|---:|---:|---|")
    for label, acc, sec, scales in rows:
        print(f"| {label} | {acc:.2f} | {sec:.1f} | {scales} |")


if __name__ == "__main__":
    main()
