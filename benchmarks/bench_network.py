"""Whole-network simulation time per image, for every engine backend available on a device.

Networks (random weights, ``asim.models.create_model`` + ``asim.convert_to_acim`` with the
reference's mapping, spec §9), at the batch sizes of the reference's runs:

* ``resnet18_cifar10``: ResNet-18, 32x32, 10 classes, batch 256, W8A8, ADC 6 bits;
* ``resnet18_imagenet``: ResNet-18, 224x224, 1000 classes, batch 64, W6A6, ADC 6 bits;
* ``vit_b_32``: ViT-B/32, 224x224, 1000 classes, batch 64, W8A8 (9-bit k and projection
  inputs, the reference's example), ADC 8 bits.

Noise (``--noise``): ``gaussian`` (rand = nonlinear = 0.39 %, the issue's target setting) or
``none``. Every backend runs the same images with the same noise seed; the table gives
seconds per image, images per second, the projected time for the dataset's validation set
(10 k CIFAR-10, 50 k ImageNet), the ADC conversions per image the engine made and the
conversions per second. Backends: ``native`` (C, CPU), ``torch`` (CPU, CUDA), ``triton``
(CUDA; on CPU only under ``TRITON_INTERPRET=1`` and only when asked for, it is very slow).

    python benchmarks/bench_network.py --device cuda                 # the full table (GPU)
    python benchmarks/bench_network.py --device cpu --batch 2 --images 2 --models resnet18_cifar10
    python benchmarks/bench_network.py --device cuda --backends triton --noise none

The backend is chosen per run by putting it first in the engine's order of preference
(``asim.engine.core.PREFERENCE``); a call a backend cannot run (e.g. weight-cell
variation) goes to the next one.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from asim import MacroConfig, NoiseConfig, convert_to_acim, resample_noise  # noqa: E402
from asim.models import create_model  # noqa: E402


@dataclass(frozen=True)
class Network:
    model: str
    kwargs: dict
    image: int
    batch: int
    dataset_images: int
    macro: MacroConfig
    convert: dict


NETWORKS = {
    "resnet18_cifar10": Network(
        "resnet18", dict(num_classes=10, stem="cifar"), 32, 256, 10_000,
        MacroConfig(weight_bits=8, input_bits=8, adc_bits=6), dict(first_layer="digital"),
    ),
    "resnet18_imagenet": Network(
        "resnet18", dict(num_classes=1000, stem="imagenet"), 224, 64, 50_000,
        MacroConfig(weight_bits=6, input_bits=6, adc_bits=6), dict(first_layer="digital"),
    ),
    "vit_b_32": Network(
        "vit_b_32", dict(num_classes=1000, image_size=224, attn_scale="embed_dim"), 224, 64,
        50_000, MacroConfig(weight_bits=8, input_bits=8, adc_bits=8),
        dict(
            first_layer="float", signed_input=True, classifier_signed_input=True,
            attention={"proj": {"input_bits": 9}, "qk": {"input_bits": 9}},
        ),
    ),
}  # fmt: skip

NOISE = {"gaussian": NoiseConfig(rand_sigma=0.39, nonlinear_sigma=0.39), "none": None}


def available_backends(device: str) -> list[str]:
    """Backends that can run on ``device`` (triton on CPU only under the interpreter)."""
    from asim import _triton
    from asim._native import engine_lib

    names = []
    if device == "cpu" and engine_lib() is not None:
        names.append("native")
    names.append("torch")
    if _triton.available(torch.device(device)):
        names.append("triton")
    return names


class _Counter:
    """ADC conversions the engine's programs made (:meth:`asim.engine.Program.operations`)."""

    def __init__(self):
        self.conversions = 0

    def add(self, program, operands) -> None:
        x = operands.x  # [B, M, R] codes, or a conv's Patches ([M, R])
        rows = x.shape[0] * x.shape[1] if isinstance(x, torch.Tensor) else x.shape[0]
        self.conversions += program.operations(rows).adc_conversions


@contextlib.contextmanager
def forced_backend(name: str, counter: _Counter):
    """Every engine call of the block tries backend ``name`` first (where it can run the
    call; else the engine's next choice), counting conversions."""
    from asim.engine import core

    run, preference = core._run, dict(core.PREFERENCE)

    def counted(program, operands, *args):
        counter.add(program, operands)
        return run(program, operands, *args)

    core._run = counted
    for device in core.PREFERENCE:
        core.PREFERENCE[device] = (core.BY_NAME[name], core.TORCH)
    try:
        yield
    finally:
        core._run = run
        core.PREFERENCE.update(preference)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def bench(name: str, net: Network, args) -> list[dict]:
    device = args.device
    batch = args.batch or net.batch
    images = args.images or batch
    macro = net.macro if args.adc_bits is None else net.macro.replace(adc_bits=args.adc_bits)
    torch.manual_seed(0)
    model = create_model(net.model, **net.kwargs).eval()
    model = convert_to_acim(model, macro, NOISE[args.noise], **net.convert).to(device)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, net.image, net.image, generator=gen).to(device)
    rows = []
    for backend in args.backends or available_backends(device):
        counter = _Counter()
        with forced_backend(backend, counter), torch.inference_mode():
            resample_noise(model, 0)
            model(x[: min(batch, 2)])  # warm-up: kernel compilation, tables, programming
            _sync(device)
            counter.conversions = 0
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            resample_noise(model, 0)
            done, t0 = 0, time.perf_counter()
            while done < images:
                model(x)
                done += batch
            _sync(device)
            seconds = time.perf_counter() - t0
        per_image = seconds / done
        rows.append(
            dict(
                network=name,
                batch=batch,
                images=done,
                backend=backend,
                s_per_image=per_image,
                images_per_s=1.0 / per_image,
                dataset_s=per_image * net.dataset_images,
                dataset_images=net.dataset_images,
                conversions_per_image=counter.conversions / done,
                conversions_per_s=counter.conversions / seconds,
                peak_gb=torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else None,
            )
        )
        print(_format(rows[-1]), flush=True)
    return rows


def _format(r: dict) -> str:
    peak = f"{r['peak_gb']:7.2f}" if r["peak_gb"] is not None else "      -"
    return (
        f"{r['network']:<18} {r['batch']:>5} {r['images']:>6} {r['backend']:<7} "
        f"{r['s_per_image']:>10.4g} {r['images_per_s']:>9.3g} "
        f"{r['dataset_s']:>9.4g} s/{r['dataset_images'] // 1000}k "
        f"{r['conversions_per_image']:>10.3g} {r['conversions_per_s']:>9.3g} {peak}"
    )


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--models", nargs="+", choices=list(NETWORKS), default=list(NETWORKS))
    p.add_argument("--backends", nargs="+", choices=["native", "torch", "triton"], default=None,
                   help="default: every backend available on the device")  # fmt: skip
    p.add_argument("--batch", type=int, default=None, help="default: 256 CIFAR, 64 ImageNet")
    p.add_argument("--images", type=int, default=None, help="images timed (default: a batch)")
    p.add_argument("--noise", choices=list(NOISE), default="gaussian")
    p.add_argument("--adc-bits", type=int, default=None, help="override every ADC width")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible")
    for b in args.backends or []:
        if b not in available_backends(args.device):
            hint = " (set TRITON_INTERPRET=1 for triton on CPU)" if b == "triton" else ""
            p.error(f"--backends {b}: not available on {args.device}{hint}")
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, noise {args.noise}")
    print(
        f"{'network':<18} {'batch':>5} {'images':>6} {'backend':<7} {'s/image':>10} "
        f"{'images/s':>9} {'dataset':>14} {'conv/image':>10} {'conv/s':>9} {'peak GB':>7}"
    )
    for model in args.models:
        bench(model, NETWORKS[model], args)


if __name__ == "__main__":
    main()
