"""Language modelling: token blocks with next-token targets, the text DataModule's split and
errors, and the perplexity/next-token accuracy of ACiMLanguageModel against a plain loop."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch.nn import functional as F

from asim.models import create_model
from lightning_modules import builders
from lightning_modules.data import TextDataModule
from lightning_modules.datasets import TokenBlocks, split_by_file, text_files
from lightning_modules.lm import ACiMLanguageModel


def test_blocks_are_consecutive_tokens_with_targets_shifted_by_one():
    tokens = torch.arange(1000) * 7 % 256
    blocks = TokenBlocks(tokens, block_size=10)
    assert len(blocks) == 99  # (1000 - 1) // 10: the last block still has its 10 targets
    for i in (0, 1, 50, 98):
        x, y = blocks[i]
        assert torch.equal(x, tokens[10 * i : 10 * i + 10])
        assert torch.equal(y, tokens[10 * i + 1 : 10 * i + 11])
    x, y = blocks[98]
    assert y[-1] == tokens[990]


def test_max_blocks_spreads_a_fixed_subset_over_the_stream():
    tokens = torch.arange(1001)
    blocks = TokenBlocks(tokens, block_size=10, max_blocks=5)
    assert blocks.starts.tolist() == [0, 250, 500, 740, 990]
    assert len(TokenBlocks(tokens, 10, max_blocks=500)) == 100  # capped at what exists


def _corpus(root, n=20):
    for i in range(n):
        (root / f"mod{i:02d}.py").write_text(f"# module {i}\n" + "x = 1\n" * (20 + i))
    (root / ".hidden.py").write_text("secret")
    (root / "notes.txt").write_text("not python")
    return root


def test_split_is_by_file_name_only(tmp_path):
    root = _corpus(tmp_path)
    files = text_files(root, "*.py")
    assert [f.name for f in files] == [f"mod{i:02d}.py" for i in range(20)]  # sorted, no hidden
    train, val = split_by_file(files, root, 0.3)
    assert val and train and set(train).isdisjoint(val) and len(train) + len(val) == 20
    # a file's side does not depend on the other files
    _, val_half = split_by_file(files[:10], root, 0.3)
    assert val_half == [f for f in val if f in files[:10]]


def test_text_datamodule_bytes_blocks_and_vocabulary(tmp_path):
    root = _corpus(tmp_path)
    dm = TextDataModule(root=str(root), block_size=16, val_fraction=0.3, val_batch_size=4)
    assert dm.num_classes == 256 and dm.task == "language_modeling"
    dm.setup("fit")
    stream = b"".join(p.read_bytes() for p in dm.val_set.files)
    x, y = dm.val_set[1]
    assert bytes(x.tolist()) == stream[16:32] and bytes(y.tolist()) == stream[17:33]
    assert len(dm.train_set) == (sum(p.stat().st_size for p in dm.train_set.files) - 1) // 16
    xb, yb = next(iter(dm.val_dataloader()))
    assert xb.shape == yb.shape == (4, 16) and xb.dtype == torch.long


def test_text_datamodule_errors_are_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="set dataset.root=DIR") as err:
        TextDataModule(root=str(tmp_path / "nope")).setup("validate")
    assert "\n" not in str(err.value)
    (tmp_path / "only.py").write_text("x = 1\n")
    with pytest.raises(FileNotFoundError, match="split is by file") as err:
        TextDataModule(root=str(tmp_path)).setup("validate")
    with pytest.raises(ValueError, match="dataset.block_size must be a positive int"):
        TextDataModule(block_size=0)


def test_default_root_is_the_standard_library():
    import sysconfig

    dm = TextDataModule()
    dm.setup("validate")
    assert str(dm.val_set.root) == sysconfig.get_paths()["stdlib"]


def _plain_loop(model, blocks) -> tuple[float, float, int]:
    """Perplexity, next-token top-1 and token count: one block at a time, plain torch."""
    nll, correct, n = 0.0, 0, 0
    with torch.no_grad():
        for i in range(len(blocks)):
            x, y = blocks[i]
            logits = model(x[None])[0].double()
            nll += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(-1) == y).sum())
            n += len(y)
    return math.exp(nll / n), correct / n, n


def test_module_perplexity_and_accuracy_equal_a_plain_loop(tmp_path):
    root = _corpus(tmp_path)
    dm = TextDataModule(root=str(root), block_size=16, val_fraction=0.3, val_batch_size=3)
    dm.setup("validate")
    torch.manual_seed(0)
    model = create_model("gpt_tiny", block_size=16, hidden_dim=16, mlp_dim=32).eval()
    module = ACiMLanguageModel(model, num_classes=256)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    trainer.validate(module, datamodule=dm, verbose=False)
    ppl, top1, n = _plain_loop(model, dm.val_set)
    res = module.results
    assert res["num_tokens"] == n == 16 * len(dm.val_set) and res["num_samples"] == len(dm.val_set)
    assert res["ppl"] == pytest.approx(ppl, rel=1e-6)
    assert res["top1"] == pytest.approx(top1, abs=1e-12)
    assert res["ppl"] == pytest.approx(math.exp(res["loss"]))


def test_lm_training_step_lowers_the_loss(tmp_path):
    root = _corpus(tmp_path)
    dm = TextDataModule(root=str(root), block_size=16, val_fraction=0.3, batch_size=8)
    dm.setup("fit")
    torch.manual_seed(0)
    model = create_model("gpt_tiny", block_size=16, hidden_dim=16, mlp_dim=32)
    before = _plain_loop(model.eval(), dm.val_set)[0]
    module = ACiMLanguageModel(
        model, num_classes=256, optimizer=lambda p: torch.optim.Adam(p, lr=3e-3)
    )
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        max_steps=30,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=dm)
    assert _plain_loop(model.eval(), dm.val_set)[0] < before / 2  # random init: ~256


def test_model_context_comes_from_the_dataset(compose):
    cfg = compose("simulate", "model=gpt_tiny", "dataset=pycode", "dataset.block_size=32")
    dm = builders.build_datamodule(cfg)
    model = builders.build_float_model(cfg, dm)
    assert model.block_size == 32 and model.vocab_size == 256


def test_a_hugging_face_tokenizer_by_configuration(tmp_path):
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "x": 1, "=": 2, "1": 3, "#": 4, "module": 5}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(
        tmp_path / "tok"
    )
    (tmp_path / "text").mkdir()
    root = _corpus(tmp_path / "text")
    dm = TextDataModule(root=str(root), tokenizer=str(tmp_path / "tok"), block_size=4)
    assert dm.num_classes == 6
    dm.setup("validate")
    ids = [i for p in dm.val_set.files for i in tok.encode(p.read_text()).ids]
    assert dm.val_set.tokens.tolist() == ids and len(set(ids)) > 3
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        TextDataModule(tokenizer=str(tmp_path / "no-such-tokenizer"))
