"""Engine speed and memory against the per-cycle spec oracle, on ResNet-18's layer shapes.

Every conv/linear shape of ResNet-18 on 32x32 input (spec §12.2), W8A8, nrow 255, CPU.
Inputs are post-ReLU activations (these layers' inputs), weights Kaiming-normal. For each
macro/noise setting the table gives the time per unique shape (x its count in the network),
the total per batch, the oracle's time and the ratio, all measured in this one run; the
ratio of CPU times (all threads) is printed too, which a shared machine disturbs less.
Peak memory is measured separately at batch 64 in a fresh subprocess per setting.

Settings: ``adc8`` (lossless, the exact shortcut), ``adc6``, ``noise`` (Gaussian,
rand = nonlinear = 0.39 %), ``measured`` (``noise=measured``, the shipped example table; the
oracle has no measured noise, so its Gaussian per-cycle run of the same cycles is the
reference), ``voting`` (K = 3, vote_levels = 2, the Gaussian noise), ``chip`` (the
Gaussian noise on a calibrated range, ``adc_full_scale=128``, with a chip's fixed pattern:
0.5 LSB offsets trimmed in 1/4 LSB steps, 1 % gains, 4 columns per ADC; spec §4.5, §4.7;
compare with ``noise``), ``chip_spread`` (the same with a 0.2 spread of the ADCs' noise
sigma: one code table per distinct sigma multiple), and the two parts of ``chip`` alone:
``range`` (the noise on the calibrated range) and ``pattern`` (the pattern at full scale
``nrow``). For them the oracle runs the Gaussian
cycles without range and pattern as its stand-in. ``--network`` adds the
whole converted ResNet-18 (batch 8) per setting; ``--programming`` the one-time cost of
quantizing and packing every weight (paid once per weight change, not per call);
``--kernel-share`` splits each call's time into the native kernel and the work around it.

    python benchmarks/bench_engine.py                 # full table, batch 8
    python benchmarks/bench_engine.py --quick         # fewer shapes, a smoke run
    python benchmarks/bench_engine.py --settings adc6 --memory-batch 0   # one row
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from asim import ACiMConv2d, ACiMLinear, MacroConfig, NoiseConfig, resample_noise  # noqa: E402
from tests.asim import oracle  # noqa: E402

# (name, C_in, C_out, k, stride, padding, input H, count in ResNet-18)
SHAPES = [
    ("layer1.*.conv*", 64, 64, 3, 1, 1, 32, 4),
    ("layer2.0.conv1", 64, 128, 3, 2, 1, 32, 1),
    ("layer2.*.conv*", 128, 128, 3, 1, 1, 16, 3),
    ("layer2.0.downsample", 64, 128, 1, 2, 0, 32, 1),
    ("layer3.0.conv1", 128, 256, 3, 2, 1, 16, 1),
    ("layer3.*.conv*", 256, 256, 3, 1, 1, 8, 3),
    ("layer3.0.downsample", 128, 256, 1, 2, 0, 16, 1),
    ("layer4.0.conv1", 256, 512, 3, 2, 1, 8, 1),
    ("layer4.*.conv*", 512, 512, 3, 1, 1, 4, 3),
    ("layer4.0.downsample", 256, 512, 1, 2, 0, 8, 1),
    ("fc", 512, 10, 0, 0, 0, 0, 1),
]

GAUSS = NoiseConfig(rand_sigma=0.39, nonlinear_sigma=0.39)
SETTINGS = {
    "adc8": (MacroConfig(), None),
    "adc6": (MacroConfig(adc_bits=6), None),
    "noise": (MacroConfig(), GAUSS),
    "measured": (MacroConfig(), NoiseConfig(file=str(ROOT / "conf/noise/measured_example.csv"))),
    "voting": (MacroConfig(vote_levels=2, vote_samples=3), GAUSS),
    "chip": (
        MacroConfig(adc_full_scale=128),
        GAUSS.replace(
            column_offset_lsb=0.5, column_gain_pct=1.0, adc_group=4, column_trim_lsb=0.25
        ),
    ),
    "range": (MacroConfig(adc_full_scale=128), GAUSS),
    "pattern": (
        MacroConfig(),
        GAUSS.replace(
            column_offset_lsb=0.5, column_gain_pct=1.0, adc_group=4, column_trim_lsb=0.25
        ),
    ),
    "chip_spread": (
        MacroConfig(adc_full_scale=128),
        GAUSS.replace(
            column_offset_lsb=0.5,
            column_gain_pct=1.0,
            column_sigma_spread=0.2,
            adc_group=4,
            column_trim_lsb=0.25,
        ),
    ),
}
ORACLE_NOISE = {"measured": GAUSS}  # the oracle's stand-in where it lacks the noise model


def _layer(shape, macro, noise):
    name, cin, cout, k, stride, pad, h, _ = shape
    torch.manual_seed(0)
    if k == 0:
        layer = ACiMLinear(cin, cout, macro=macro, noise=noise, signed_input=False)
        x = torch.relu(torch.randn(BATCH, cin))
    else:
        layer = ACiMConv2d(
            cin,
            cout,
            k,
            stride=stride,
            padding=pad,
            bias=False,
            macro=macro,
            noise=noise,
            signed_input=False,
        )
        nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
        x = torch.relu(torch.randn(BATCH, cin, h, h))
    resample_noise(layer, 0)
    return layer.to(DEVICE), x.to(DEVICE)


def _oracle(shape, layer, x, macro, noise):
    if noise is not None and noise.file is not None:
        noise = GAUSS
    kw = dict(
        wbit=macro.weight_bits,
        xbit=macro.input_bits,
        adc_prec=macro.adc_bits,
        nrow=macro.nrow,
        signed_act=False,
        rand_noise_sigma=noise.rand_sigma if noise else 0.0,
        non_linear_sigma=noise.nonlinear_sigma if noise else 0.0,
        voting_levels=macro.vote_levels,
        num_samp=macro.vote_samples,
    )
    x, w = x.cpu(), layer.weight.detach().cpu()  # the oracle is the CPU reference
    if shape[3] == 0:
        bias = None if layer.bias is None else layer.bias.detach().cpu()
        return oracle.oracle_linear(x, w, bias, **kw)
    return oracle.oracle_conv2d(x, w, None, stride=shape[4], padding=shape[5], **kw)


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        _sync()
        t0 = time.perf_counter()
        fn()
        _sync()
        best = min(best, time.perf_counter() - t0)
    return best


def _cpu_time(fn) -> float:
    """CPU seconds of this process (all threads) for one call: on a shared machine it
    counts the work, not the waiting for a core."""
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def run_table(settings, shapes, repeats):
    rows = {}
    with torch.no_grad():
        for sname in settings:
            macro, noise = SETTINGS[sname]
            for shape in shapes:
                layer, x = _layer(shape, macro, noise)
                layer(x)  # warm-up

                def ours_fn(layer=layer, x=x):
                    return layer(x)

                def ref_fn(s=shape, lay=layer, x=x, m=macro, n=noise):
                    return _oracle(s, lay, x, m, n)

                ours = _time(ours_fn, repeats)
                ref = _time(ref_fn, 1)
                ours_cpu = min(_cpu_time(ours_fn) for _ in range(repeats))
                ref_cpu = _cpu_time(ref_fn)
                rows[(sname, shape[0])] = (ours, ref, shape[7], ours_cpu, ref_cpu)
                print(
                    f"  {sname:8s} {shape[0]:22s} ours {ours * 1e3:9.1f} ms   per-cycle "
                    f"{ref * 1e3:9.1f} ms   x{ref / ours:6.1f}   "
                    f"(CPU time x{ref_cpu / ours_cpu:6.1f})",
                    flush=True,
                )
    return rows


@contextlib.contextmanager
def timed_kernel():
    """Wraps the native library in a timing proxy for the ``with`` block and yields
    ``[seconds, calls]`` spent inside ``asim_run_call`` (reset it between timed forwards)."""
    from asim.engine import native

    lib, inside, saved = native.engine_lib(), [0.0, 0], native.engine_lib

    class Timed:
        def __getattr__(self, name):
            return getattr(lib, name)

        def asim_run_call(self, args):
            t0 = time.perf_counter()
            rc = lib.asim_run_call(args)
            inside[0] += time.perf_counter() - t0
            inside[1] += 1
            return rc

    native.engine_lib = lambda: Timed()
    try:
        yield inside
    finally:
        native.engine_lib = saved


def kernel_share(setting: str, shapes, repeats: int) -> tuple[float, float]:
    """``(total, in_kernel)`` seconds per batch over ``shapes``: each layer call's best time
    and, in that same call, the time spent inside the native C call (``asim_run_call``); the
    difference is what a call spends around the kernel (quantize, program check, setup,
    de-quantize). CPU only: the native library is wrapped by a timing proxy."""
    total = kernel = 0.0
    with timed_kernel() as inside:
        macro, noise = SETTINGS[setting]
        with torch.no_grad():
            for shape in shapes:
                layer, x = _layer(shape, macro, noise)
                layer(x)
                best = (float("inf"), 0.0)
                for _ in range(max(repeats, 5)):
                    inside[0] = 0.0
                    t0 = time.perf_counter()
                    layer(x)
                    best = min(best, (time.perf_counter() - t0, inside[0]))
                total += best[0] * shape[7]
                kernel += best[1] * shape[7]
    return total, kernel


def network_time(setting: str, repeats: int) -> float:
    """Seconds per batch of the whole converted ResNet-18 (CIFAR stem), warm."""
    from asim import convert_to_acim
    from asim.models import create_model

    macro, noise = SETTINGS[setting]
    torch.manual_seed(0)
    model = convert_to_acim(create_model("resnet18", num_classes=10), macro, noise).eval()
    resample_noise(model, 0)
    model.to(DEVICE)
    x = torch.randn(BATCH, 3, 32, 32, device=DEVICE)
    with torch.no_grad():
        model(x)
        return _time(lambda: model(x), repeats)


def programming_time(shapes, repeats: int) -> tuple[float, float]:
    """(seconds to program every weight of the network once, seconds per batch it saves):
    a forward that reprograms minus one that reuses the programmed arrays (adc6)."""
    macro, noise = SETTINGS["adc6"]
    cold = warm = 0.0
    with torch.no_grad():
        for shape in shapes:
            layer, x = _layer(shape, macro, noise)
            layer(x)
            warm += _time(lambda layer=layer, x=x: layer(x), repeats) * shape[7]

            def fresh(layer=layer, x=x):
                layer._programs.clear()
                layer(x)

            cold += _time(fresh, repeats) * shape[7]
    return cold - warm, warm


def peak_memory(setting: str, batch: int) -> float:
    """Peak RSS growth (MiB) of one forward through every shape, in a fresh process."""
    code = f"""
import sys, torch
sys.path.insert(0, {str(ROOT)!r})
import benchmarks.bench_engine as b
b.BATCH = {batch}
macro, noise = b.SETTINGS[{setting!r}]
layers = [b._layer(s, macro, noise) for s in b.SHAPES]
def rss(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
base = rss('VmRSS')
with torch.no_grad():
    for layer, x in layers:
        layer(x)
print(rss('VmHWM') - base)
"""
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    return float(out.stdout.strip().splitlines()[-1])


BATCH = 8
DEVICE = torch.device("cpu")


def main() -> None:
    global BATCH, DEVICE
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--settings", nargs="*", default=list(SETTINGS))
    ap.add_argument("--quick", action="store_true", help="three shapes only")
    ap.add_argument("--memory-batch", type=int, default=64)
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--network", action="store_true", help="time the whole ResNet-18 too")
    ap.add_argument(
        "--no-table", action="store_true", help="skip the per-shape table and its oracle runs"
    )
    ap.add_argument("--programming", action="store_true", help="one-time programming cost")
    ap.add_argument(
        "--kernel-share",
        action="store_true",
        help="per setting, the time layer calls spend inside the native kernel vs around it",
    )
    ap.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="where the engine runs (the per-cycle oracle always runs on the CPU; on cuda the "
        "engine's default backend is triton, ASIM_BACKEND forces another)",
    )
    args = ap.parse_args()
    BATCH = args.batch
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available")
    if DEVICE.type == "cuda" and args.memory_batch:
        print("peak memory is measured as process RSS on the CPU only; skipped on cuda")
        args.memory_batch = 0
    shapes = [SHAPES[0], SHAPES[5], SHAPES[-1]] if args.quick else SHAPES
    print(
        f"torch {torch.__version__}, {DEVICE}, {torch.get_num_threads()} threads, batch {BATCH}, "
        f"W8A8 nrow 255; per-cycle = tests/asim/oracle.py"
    )
    summary = {s: {} for s in args.settings}
    rows = {} if args.no_table else run_table(args.settings, shapes, args.repeats)
    for sname in args.settings if rows else ():
        ours, ref, ours_cpu, ref_cpu = (
            sum(rows[(sname, s[0])][k] * s[7] for s in shapes) for k in (0, 1, 3, 4)
        )
        summary[sname] = {
            "ours_s": ours,
            "per_cycle_s": ref,
            "speedup": ref / ours,
            "cpu_speedup": ref_cpu / ours_cpu,
        }
    print(
        f"\n{'setting':8s} {'ours (s/batch)':>15s} {'per-cycle (s)':>14s} {'speed-up':>9s} "
        f"{'CPU-time speed-up':>18s}"
    )
    for sname in args.settings if rows else ():
        r = summary[sname]
        print(
            f"{sname:8s} {r['ours_s']:15.3f} {r['per_cycle_s']:14.2f} {r['speedup']:8.1f}x "
            f"{r['cpu_speedup']:17.1f}x"
        )
    if args.network:
        print(f"\nwhole converted ResNet-18, batch {BATCH} (s/batch):")
        for sname in args.settings:
            t = network_time(sname, args.repeats)
            summary[sname]["network_s"] = t
            print(f"  {sname:8s} {t:8.3f}")
    if args.kernel_share and DEVICE.type == "cpu":
        print("\ninside / around the native kernel, s per batch (best call per shape):")
        for sname in args.settings:
            total, kernel = kernel_share(sname, shapes, args.repeats)
            summary[sname]["call_s"], summary[sname]["in_kernel_s"] = total, kernel
            print(f"  {sname:8s} {total:8.3f} = kernel {kernel:.3f} + around {total - kernel:.3f}")
    if args.programming:
        once, per_batch = programming_time(shapes, args.repeats)
        summary["programming"] = {"once_s": once, "adc6_batch_s": per_batch}
        print(
            f"\nprogramming every weight once: {once:.3f} s (saved per call; an adc6 batch "
            f"with programmed arrays takes {per_batch:.3f} s)"
        )
    if args.memory_batch:
        print(f"\npeak additional memory at batch {args.memory_batch} (all shapes, fresh process):")
        for sname in args.settings:
            mib = peak_memory(sname, args.memory_batch)
            summary[sname][f"peak_mib_batch{args.memory_batch}"] = mib
            print(f"  {sname:8s} {mib:8.0f} MiB")
    if args.json:
        summary["run"] = run_info(args)
        args.json.write_text(json.dumps(summary, indent=2))


def run_info(args) -> dict:
    """How the figures were made: commit, command, machine and library versions."""

    def git(*cmd):
        try:
            out = subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True)
            return out.stdout.strip() if out.returncode == 0 else None
        except OSError:
            return None

    cpu = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "command": "python benchmarks/bench_engine.py " + " ".join(sys.argv[1:]),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "batch": BATCH,
        "device": str(DEVICE),
    }


if __name__ == "__main__":
    main()
