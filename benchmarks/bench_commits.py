"""Two whole checkouts (Python and C) timed alternately: ratios that survive a shared machine.

    python benchmarks/bench_commits.py --base c060ed8 --settings adc6 noise chip chip_spread

bench_kernel_ab.py swaps only the C kernel; this swaps the whole ``asim`` package, for
changes that span the Python side too (code tables, their re-indexing, the kernel's
arguments). ``--base`` names a commit, checked out into a temporary git worktree. Each round
runs one fresh process per checkout (base, then the working tree) that converts ResNet-18
(batch 8, bench_engine.py's settings) and times a forward pass per setting as the thread CPU
time at one thread, which other jobs disturb far less than wall time; the best of the rounds
is printed, and each setting against ``noise`` where that was timed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(root: str, settings: list[str], repeats: int) -> None:
    """Time ``settings`` with the ``asim`` of ``root``; print ``setting seconds`` lines."""
    import time
    import warnings

    sys.path.insert(0, root)
    import torch

    from asim import convert_to_acim, resample_noise
    from asim.models import create_model
    from benchmarks import bench_engine as be

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    with torch.no_grad():
        for st in settings:
            macro, noise = be.SETTINGS[st]
            torch.manual_seed(0)
            model = convert_to_acim(create_model("resnet18", num_classes=10), macro, noise)
            model.eval()
            x = torch.randn(8, 3, 32, 32)
            resample_noise(model, 0)
            model(x)  # builds the programs and tables once
            best = float("inf")
            for _ in range(repeats):
                resample_noise(model, 0)
                t0 = time.thread_time()
                model(x)
                best = min(best, time.thread_time() - t0)
            print(st, best, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", help="the commit to compare with (required)")
    ap.add_argument("--settings", nargs="*", default=["adc6", "noise", "chip"])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="timed passes per process")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.settings, args.repeats)
    if not args.base:
        ap.error("--base COMMIT is required")
    sys.path.insert(0, str(ROOT))
    from benchmarks import bench_engine as be

    if unknown := [s for s in args.settings if s not in be.SETTINGS]:
        ap.error(f"--settings {' '.join(unknown)}: pick from {', '.join(be.SETTINGS)}")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(base), args.base],
                       cwd=ROOT, check=True)  # fmt: skip
        try:
            best: dict[tuple[str, str], float] = {}
            for r in range(args.rounds):
                for tag, root in (("base", base), ("new", ROOT)):
                    out = subprocess.run(
                        [sys.executable, __file__, "--child", str(root), "--repeats",
                         str(args.repeats), "--settings", *args.settings],
                        capture_output=True, text=True, check=True,
                    ).stdout  # fmt: skip
                    for line in out.split("\n"):
                        if line.strip():
                            st, t = line.split()
                            best[st, tag] = min(best.get((st, tag), float("inf")), float(t))
                    print(f"round {r + 1}: {tag} done", file=sys.stderr, flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT)
    print(f"ResNet-18, batch 8; base {args.base} vs working tree; best of {args.rounds} rounds "
          "(thread CPU s, 1 thread)")  # fmt: skip
    for st in args.settings:
        b, n = best[st, "base"], best[st, "new"]
        line = f"  {st:12s} base {b:8.3f}  new {n:8.3f}  new/base {n / b:.3f}"
        if "noise" in args.settings and st != "noise":
            line += f"   / noise: base {b / best['noise', 'base']:.2f}x"
            line += f"  new {n / best['noise', 'new']:.2f}x"
        print(line, flush=True)


if __name__ == "__main__":
    main()
