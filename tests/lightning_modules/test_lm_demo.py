"""The offline language-model demo: ``python simulate.py model=gpt_tiny dataset=pycode``
reproduces the shipped checkpoint's perplexity on the validation split."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.nn import functional as F

from lightning_modules import builders
from lightning_modules.config import PROJECT_ROOT

RECORD = PROJECT_ROOT / "checkpoints" / "gpt_tiny.json"


def _float_perplexity(model, blocks) -> float:
    """Independent of the LightningModule: one block at a time, summed NLL in float64."""
    nll, n = 0.0, 0
    with torch.no_grad():
        for i in range(len(blocks)):
            x, y = blocks[i]
            nll += float(F.cross_entropy(model(x[None])[0].double(), y, reduction="sum"))
            n += len(y)
    return math.exp(nll / n)


def test_demo_reproduces_the_shipped_checkpoints_perplexity(compose_run):
    cfg = compose_run("simulate", "model=gpt_tiny", "dataset=pycode")
    res = builders.simulate(cfg)
    dm = builders.build_datamodule(cfg)
    dm.setup("validate")
    model = builders.build_float_model(cfg, dm)
    builders.load_weights(model, cfg.ckpt)
    assert res["num_tokens"] == 64 * 128 == len(dm.val_set) * dm.block_size
    assert res["float_ppl"] == pytest.approx(_float_perplexity(model.eval(), dm.val_set), rel=1e-6)
    # the reference macro, noise off: the simulation is lossless
    assert res["sim_ppl"] == res["inference_ppl"] and res["sim_ppl_std"] == 0.0
    assert res["inference_ppl"] == pytest.approx(res["float_ppl"], rel=1e-2)  # W8A8 costs little
    assert res["float_ppl"] < 20  # a trained model (random init: ~256)
    record = json.loads(RECORD.read_text())
    if record["validation_fingerprint"] != dm.val_set.fingerprint():
        pytest.skip("this Python's standard library differs from the one the record was made on")
    for key in ("float_ppl", "inference_ppl", "sim_ppl", "float_top1", "inference_top1"):
        assert res[key] == pytest.approx(record[key], rel=1e-6), key


def test_a_language_models_chip_population_prints_its_table(compose_run):
    """Chips and a silicon row beside perplexity: the rows without a perplexity show '-'."""
    from lightning_modules.results import format_table

    cfg = compose_run("simulate", "model=gpt_tiny", "dataset=pycode", "noise=gaussian_lsb",
                      "noise.column_offset_lsb=0.5", "simulate.chips=2",
                      "simulate.measured_top1=0.4", "trainer.limit_val_batches=1")  # fmt: skip
    res = builders.simulate(cfg)
    assert len(res["chip_top1"]) == 2 and res["chip_top1"][0] != res["chip_top1"][1]
    lines = format_table(res).splitlines()
    header = next(line for line in lines if line.startswith("pass"))
    assert header.split()[:3] == ["pass", "perplexity", "next-token"]
    sim = next(line for line in lines if line.startswith("simulated (2 chips x 1)"))
    assert f"{res['sim_ppl']:.3f} ± {res['sim_ppl_std']:.3f}" in sim
    worst = next(line for line in lines if line.startswith("worst of 2 chips"))
    assert worst.split()[4:6] == ["-", f"{100 * res['worst_chip_top1']:.2f}%"]
    measured = next(line for line in lines if line.startswith("measured (silicon)"))
    assert measured.split()[2:4] == ["-", "40.00%"]
