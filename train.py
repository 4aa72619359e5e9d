"""Train a model for an SRAM ACiM macro: quantization-aware (QAT) or noise-aware (NAT).

    python train.py                                      # digits_cnn QAT, 30 epochs: ~MEASURED
    python train.py export=checkpoints/digits_cnn.pt     # regenerate the shipped checkpoint
    python train.py experiment=train/digits_nat          # NAT from the shipped checkpoint
    python train.py experiment=train/resnet18_cifar10_qat dataset.root=DIR trainer=gpu

Writes Lightning checkpoints, the best model's float state_dict and results.json into the
Hydra run dir (outputs/train/...). See README.md; configs live in conf/.
"""

import sys

import hydra
from omegaconf import DictConfig

from lightning_modules import builders, entry

builders.register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    """Train; returns the best validation top-1 (for sweepers)."""
    return entry.run_task(lambda c: builders.train(c)["best_val_acc"], cfg)


if __name__ == "__main__":
    # resume=: the run's own overrides and folder; -m: every job checked before the first
    sys.argv[1:] = entry.preflight("train", sys.argv[1:])
    main()
    sys.exit(entry.exit_status())
