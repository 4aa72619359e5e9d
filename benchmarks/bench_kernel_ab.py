"""Two versions of the native kernel timed alternately in one process: ratios that hold on a
shared machine, where back-to-back runs of bench_engine.py move by 2x with the load.

    python benchmarks/bench_kernel_ab.py --base 2d6e860                  # one ResNet-18 layer
    python benchmarks/bench_kernel_ab.py --base 2d6e860 --network --repeats 2

``--base`` names a commit (or a file) whose ``asim/_native/engine.c`` is built beside the
working tree's, with the working tree's headers (the Python side and the argument struct
are the current ones). Per repeat, every setting runs once with each library on the same
layer (or whole ResNet-18, batch 8, as bench_engine.py's ``--network``), the same inputs and
the same noise index, so the two outputs must be bit-identical (checked). By default the
time is the CPU time of the calling thread at one thread, which other jobs disturb far less
than wall time; ``--wall`` times wall-clock seconds at the current thread count instead.
Best of the repeats; each setting also against adc6 with the same library.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from asim import _native, convert_to_acim, resample_noise  # noqa: E402
from asim.engine import native  # noqa: E402
from asim.models import create_model  # noqa: E402
from benchmarks import bench_engine as be  # noqa: E402


def base_source(base: str, tmp: Path) -> Path:
    """engine.c of commit ``base`` (or the file ``base``) as a file."""
    if Path(base).is_file():
        return Path(base)
    text = subprocess.run(
        ["git", "show", f"{base}:asim/_native/engine.c"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    out = tmp / "engine_base.c"
    out.write_text(text)
    return out


def workloads(settings, network: bool, shape):
    """``{setting: (module, input)}`` with the noise index reset before every call."""
    out = {}
    for st in settings:
        macro, noise = be.SETTINGS[st]
        if network:
            torch.manual_seed(0)
            model = convert_to_acim(create_model("resnet18", num_classes=10), macro, noise)
            out[st] = (model.eval(), torch.randn(be.BATCH, 3, 32, 32))
        else:
            out[st] = be._layer(shape, macro, noise)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="commit (or engine.c file) to compare with")
    ap.add_argument("--settings", nargs="*", default=["adc6", "noise", "measured", "voting"])
    ap.add_argument("--shape", default="layer1.*.conv*", help="a bench_engine.py shape name")
    ap.add_argument("--network", action="store_true", help="the whole ResNet-18 instead")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--wall", action="store_true", help="wall-clock time, current threads")
    args = ap.parse_args()
    shapes = {s[0]: s for s in be.SHAPES}
    if not args.network and args.shape not in shapes:
        ap.error(f"--shape {args.shape!r}: pick one of {', '.join(shapes)}")
    unknown = [s for s in args.settings if s not in be.SETTINGS]
    if unknown:
        ap.error(f"--settings {' '.join(unknown)}: pick from {', '.join(be.SETTINGS)}")
    be.BATCH, be.DEVICE = 8, torch.device("cpu")
    clock = time.perf_counter if args.wall else time.thread_time
    if not args.wall:
        torch.set_num_threads(1)  # the kernel then runs on this thread: its CPU time
    with tempfile.TemporaryDirectory() as tmp:
        libs = {"base": _native._build(base_source(args.base, Path(tmp))), "new": _native._build()}
    if None in libs.values():
        sys.exit("error: the native kernel did not build (see the warning above)")
    work = workloads(args.settings, args.network, shapes.get(args.shape))
    best = {(st, tag): float("inf") for st in args.settings for tag in libs}
    saved = native.engine_lib
    try:
        with torch.no_grad():
            for _ in range(args.repeats):
                for st, (module, x) in work.items():
                    outs = []
                    for tag, lib in libs.items():
                        native.engine_lib = lambda lib=lib: lib
                        resample_noise(module, 0)
                        t0 = clock()
                        outs.append(module(x))
                        best[st, tag] = min(best[st, tag], clock() - t0)
                    if not torch.equal(*outs):
                        sys.exit(f"error: {st}: the two kernels' outputs differ")
    finally:
        native.engine_lib = saved
    what = "ResNet-18, batch 8" if args.network else f"{args.shape}, batch 8"
    unit = "wall s" if args.wall else "thread CPU s, 1 thread"
    print(f"{what}; base {args.base} vs working tree; best of {args.repeats} ({unit})")
    for st in args.settings:
        b, n = best[st, "base"], best[st, "new"]
        line = f"  {st:9s} base {b:8.3f}  new {n:8.3f}  new/base {n / b:.3f}"
        if "adc6" in args.settings and st != "adc6":
            b6, n6 = best["adc6", "base"], best["adc6", "new"]
            line += f"   / adc6: base {b / b6:.2f}x  new {n / n6:.2f}x"
        print(line, flush=True)


if __name__ == "__main__":
    main()
