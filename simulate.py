"""Simulate a trained model on an SRAM ACiM macro: float vs quantized inference vs macro.

    python simulate.py                                   # digits, shipped checkpoint, no noise
    python simulate.py macro=bitserial_255 noise=measured simulate.repeats=5
    python simulate.py -m macro.adc_bits=4,5,6,7,8 noise=gaussian noise.rand_sigma=0,0.2,0.4
    python simulate.py macro.adc_bits=5 simulate.sensitivity=true  # accuracy per ACiM layer
    python simulate.py cost=adc_only cost.vdd=0.8        # another energy set (conf/cost/)
    python simulate.py experiment=resnet18_cifar10 ckpt=PATH dataset.root=DIR trainer=gpu

Prints a results table (accuracy per pass; energy and ADC conversions per sample from the cost
model) and writes results.json into the Hydra run dir (outputs/simulate/...).
See README.md for every option; configs live in conf/.
"""

import sys

import hydra
from omegaconf import DictConfig

from lightning_modules import builders, entry, run

builders.register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="simulate")
def main(cfg: DictConfig) -> float | tuple[float, ...]:
    """Run the simulation; returns the mean simulated top-1, or the `optimized_metrics` of a
    multi-objective sweeper (hparams_search=macro_pareto; pooled over `conditions` when
    given), to Hydra (NaN for a failed job)."""
    metrics = cfg.get("optimized_metrics")
    failed = tuple(float("nan") for _ in metrics) if metrics else float("nan")
    return entry.run_task(run.trial, cfg, failed)


if __name__ == "__main__":
    # -m: every job's config is checked before the first job runs
    sys.argv[1:] = entry.preflight("simulate", sys.argv[1:])
    main()
    sys.exit(entry.exit_status())
