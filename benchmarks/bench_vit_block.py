"""Layer-call overhead at batch 1: one ViT-B/32 encoder block on the macro, CPU.

The block (224x224 input, 50 tokens, width 768, 12 heads, MLP 3072), W8A8, nrow 255: the
qkv projection, QK^T and AV (12 heads each), the output projection and the two MLP linears,
all ACiM layers (``ACiMMultiheadAttention`` + ``ACiMLinear``), at batch 1, the case where a
call's fixed costs matter most. For each setting (ADC 8 or 6 bits, noise off or on) it gives
the best time of the block's forward, the time spent inside the native kernel
(``asim_run_call``, all engine calls of the forward), and the share of the call spent around
it (quantization, program and weight checks, noise addressing, de-quantization, Python).
With ADC 8 and noise off the macro is lossless and the exact shortcut answers (no kernel).

    python benchmarks/bench_vit_block.py                # every setting, best of 20
    python benchmarks/bench_vit_block.py --repeats 50 --settings adc6 adc6_noise
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from asim import (  # noqa: E402
    ACiMLinear,
    ACiMMultiheadAttention,
    MacroConfig,
    NoiseConfig,
    resample_noise,
)
from benchmarks.bench_engine import timed_kernel  # noqa: E402

GAUSS = NoiseConfig(rand_sigma=0.39, nonlinear_sigma=0.39)
SETTINGS = {
    "adc8": (MacroConfig(), None),
    "adc8_noise": (MacroConfig(), GAUSS),
    "adc6": (MacroConfig(adc_bits=6), None),
    "adc6_noise": (MacroConfig(adc_bits=6), GAUSS),
}
WIDTH, HEADS, MLP, TOKENS = 768, 12, 3072, 50


class Block(nn.Module):
    """A pre-norm ViT encoder block with every matmul on the macro."""

    def __init__(self, macro: MacroConfig, noise: NoiseConfig | None):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
        self.attn = ACiMMultiheadAttention(
            WIDTH, HEADS, batch_first=True, macro=macro, noise=noise, qk_noise=noise
        )
        self.fc1 = ACiMLinear(WIDTH, MLP, macro=macro, noise=noise)
        self.fc2 = ACiMLinear(MLP, WIDTH, macro=macro, noise=noise)

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.ln2(x))))


def measure(setting: str, repeats: int) -> tuple[float, float, int]:
    """``(best forward s, kernel s in that forward, kernel calls)`` of the block."""
    macro, noise = SETTINGS[setting]
    torch.manual_seed(0)
    block = Block(macro, noise).eval()
    resample_noise(block, 0)
    x = torch.randn(1, TOKENS, WIDTH)
    best = (float("inf"), 0.0, 0)
    with timed_kernel() as inside:
        with torch.no_grad():
            block(x)  # warm: programs compiled, weights programmed
            for _ in range(repeats):
                inside[:] = [0.0, 0]
                t0 = time.perf_counter()
                block(x)
                best = min(best, (time.perf_counter() - t0, inside[0], inside[1]))
    return best


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    args = ap.parse_args(argv)
    print(
        f"torch {torch.__version__}, cpu, {torch.get_num_threads()} threads; ViT-B/32 block, "
        f"batch 1, {TOKENS} tokens, W8A8 nrow 255, best of {args.repeats}"
    )
    print(f"{'setting':<11} {'call ms':>8} {'kernel ms':>10} {'calls':>6} {'around':>7}")
    for name in args.settings:
        total, kernel, calls = measure(name, args.repeats)
        around = (total - kernel) / total
        print(f"{name:<11} {total * 1e3:8.2f} {kernel * 1e3:10.2f} {calls:6d} {around:7.1%}")


if __name__ == "__main__":
    main()
