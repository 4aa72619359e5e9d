"""Train a model for an SRAM ACiM macro: quantization-aware (QAT) or noise-aware (NAT).

    python train.py                                      # digits_cnn QAT, a few minutes on CPU
    python train.py export=checkpoints/digits_cnn.pt     # regenerate the shipped checkpoint
    python train.py experiment=train/digits_nat          # NAT from the shipped checkpoint
    python train.py experiment=train/resnet18_cifar10_qat dataset.root=DIR trainer=gpu

Writes Lightning checkpoints, the best model's float state_dict and results.json into the
Hydra run dir (outputs/train/...). See README.md; configs live in conf/.
"""

import sys

import hydra
from omegaconf import DictConfig

from lightning_modules import builders

builders.register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    """Train; returns the best validation top-1 (for sweepers)."""
    try:
        return builders.train(cfg)["best_val_acc"]
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    except builders.RunInterrupted as e:  # Ctrl-C: one line saying what was kept
        print(e, file=sys.stderr, flush=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
