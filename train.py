"""Train a model for an SRAM ACiM macro: quantization-aware (QAT) or noise-aware (NAT).

    python train.py                                      # digits_cnn QAT, 30 epochs: ~30 s
    python train.py export=my_digits_cnn.pt              # the best model also written there
    python train.py experiment=train/digits_nat          # NAT from the shipped checkpoint
    python train.py experiment=train/resnet18_cifar10_qat dataset.root=DIR trainer=gpu

Writes Lightning checkpoints, the best model's float state_dict and results.json into the
Hydra run dir (outputs/train/...); Ctrl-C prints the command that resumes the run exactly.
`python train.py` took 27.9 s wall on the 2-core CPU (README "Running simulations and
training" says how that was measured). See README.md; configs live in conf/.
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
