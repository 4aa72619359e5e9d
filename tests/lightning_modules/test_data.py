"""The DataModule and its datasets on tiny files written in the real on-disk formats
(acim-model.md §9.5, §9.6). ``CIFAR10DataModule(...)`` and friends are the presets
(``from_preset``) under their old class names."""

from __future__ import annotations

import csv
import hashlib
import pickle
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler
from torchvision import transforms as T
from torchvision.datasets import CIFAR10, ImageFolder

from lightning_modules import builders, data
from lightning_modules.data import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    DataModule,
    DigitsDataModule,
    ImageNetDataModule,
    build_eval_transform,
    build_train_transform,
    instantiate_datamodule,
)
from lightning_modules.sampler import UnpaddedDistributedSampler, first_sample_index

CONF = Path(__file__).resolve().parents[2] / "conf" / "dataset"


def _preset(name: str):
    """The ``dataset`` node of a run with ``dataset=NAME``: the schema plus the preset's delta."""
    return builders.compose("simulate", [f"dataset={name}"]).dataset


# The constants live in the presets (one source); the tests write files with them.
_CIFAR10, _CIFAR100, _IMAGENET = _preset("cifar10"), _preset("cifar100"), _preset("imagenet")
CIFAR10_CLASSES, CIFAR100_CLASSES = tuple(_CIFAR10.class_names), tuple(_CIFAR100.class_names)
CIFAR10_MEAN, CIFAR10_STD = tuple(_CIFAR10.mean), tuple(_CIFAR10.std)
IMAGENET_MEAN, IMAGENET_STD = tuple(_IMAGENET.mean), tuple(_IMAGENET.std)


# The seed-0 digits validation split, as the DataModule drew it before the torchvision rework.
DIGITS_SEED0_VAL_COUNTS = [45, 46, 44, 46, 45, 46, 45, 45, 43, 45]
DIGITS_SEED0_VAL_HEAD = [1, 4, 8, 6, 5, 9, 9, 1, 3, 5, 2, 2]

# ------------------------------------------------------------------------------ file writers


def _pickle(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _cifar_rows(values: list[int]) -> np.ndarray:
    """uint8 [N, 3072] rows (CHW flattened, as in the CIFAR pickles); image i: R=v, G=v+1, B=v+2."""
    rows = np.empty((len(values), 3, 1024), dtype=np.uint8)
    for i, v in enumerate(values):
        rows[i] = np.array([v, v + 1, v + 2], dtype=np.uint8)[:, None]
    return rows.reshape(len(values), 3072)


def _write_cifar10_pickles(root: Path, *, with_train: bool = True) -> dict[str, list[int]]:
    """torchvision's cifar-10-batches-py/ with 2 images per training batch and 3 test images."""
    folder = root / "cifar-10-batches-py"
    labels = {}
    if with_train:
        for b in range(1, 6):
            ys = [b % 10, (b + 3) % 10]
            _pickle(
                folder / f"data_batch_{b}",
                {"data": _cifar_rows([10 * b, 10 * b + 5]), "labels": ys},
            )
            labels[f"data_batch_{b}"] = ys
    _pickle(folder / "test_batch", {"data": _cifar_rows([200, 210, 220]), "labels": [7, 0, 3]})
    labels["test_batch"] = [7, 0, 3]
    _pickle(folder / "batches.meta", {"label_names": list(CIFAR10_CLASSES), "num_vis": 3072})
    return labels


def _write_cifar100_pickles(root: Path) -> None:
    folder = root / "cifar-100-python"
    train = {"data": _cifar_rows([1, 2, 3, 4]), "fine_labels": [99, 0, 42, 5]}
    _pickle(folder / "train", {**train, "coarse_labels": [0, 0, 1, 1]})
    _pickle(folder / "test", {"data": _cifar_rows([9, 8]), "fine_labels": [17, 63]})
    meta = {"fine_label_names": list(CIFAR100_CLASSES), "coarse_label_names": ["c"] * 20}
    _pickle(folder / "meta", meta)


def _png(path: Path, value: int, size: tuple[int, int] = (32, 32)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, dtype=np.uint8)).save(path)


def _write_cifar10_folders(root: Path, splits=("train", "test")) -> None:
    """Reference layout; class k's images have pixel value 50k + j, plus stray non-directories."""
    for split in splits:
        for k, name in enumerate(["airplane", "cat", "dog"]):
            for j in range(2 if split == "train" else 1):
                _png(root / split / name / f"img_{j}.png", 50 * k + j)
        (root / split / "0_stray.txt").write_text("sorts first; must not take label 0")
        (root / split / ".hidden").mkdir()
        (root / split / "cat" / "notes.txt").write_text("not an image")
        (root / split / "cat" / "._img_0.png").write_bytes(b"macOS metadata, hidden")
        _png(root / split / "cat" / "nested" / "deeper.png", 255)  # not <class>/*.png


def _write_cifar100_csv_layout(root: Path) -> None:
    for name in ["3.jpg", "1.jpg", "10.jpg", "2.jpg", "77.jpg"]:  # 77 is unlabelled
        _png(root / "train_images" / name, 100)
    for name in ["5.jpg", "4.jpg"]:
        _png(root / "test_images" / name, 100)
    _write_csv(root / "train.csv", [("1", 11), ("2", 22), ("3", 33), ("10", 99)])
    _write_csv(root / "test.csv", [("4.jpg", 44), ("5.jpg", 55)])


def _write_csv(path: Path, rows, header=("image_id", "fine_labels", "coarse_labels")) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in rows:
            writer.writerow([*row, 0][: len(header)])


def _jpeg(path: Path, size: tuple[int, int], left: tuple, right: tuple) -> None:
    """A JPEG whose left quarter is ``left`` and the rest ``right``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, right)
    img.paste(Image.new("RGB", (size[0] // 4, size[1]), left), (0, 0))
    img.save(path, "JPEG", quality=95)


def _write_imagenet(root: Path, val_name: str = "valid") -> None:
    for split, n in (("train", 2), (val_name, 1)):
        for wnid in ["n01440764", "n01443537"]:
            for j in range(n):
                _jpeg(root / split / wnid / f"{wnid}_{j}.JPEG", (64, 32), (255, 0, 0), (0, 0, 255))
        (root / split / "LOC_synset_mapping.txt").write_text("stray file")


def _assert_one_line(excinfo: pytest.ExceptionInfo, *fragments: object) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in fragments:
        assert str(fragment) in message, message
    return message


# ---------------------------------------------------------------------------------- digits


def test_digits_shapes_dtypes_and_normalisation():
    dm = DigitsDataModule()
    assert (dm.num_classes, dm.in_channels, dm.image_size) == (10, 1, 8)
    assert dm.class_names == [str(i) for i in range(10)]
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (64, 1, 8, 8) and images.dtype == torch.float32
    assert labels.dtype == torch.int64
    assert len(dm.train_set) + len(dm.val_set) == 1797
    train_images = dm.train_set.tensors[0]
    assert abs(float(train_images.mean())) < 1e-5
    assert float(train_images.std(correction=0)) == pytest.approx(1.0, abs=1e-5)
    # pixel/16 then (x - mean) / std: the raw 0..16 grid is recovered exactly.
    raw = (dm.val_set.tensors[0] * dm.val_set.std + dm.val_set.mean) * 16
    assert torch.allclose(raw, raw.round(), atol=1e-4) and raw.min() >= -1e-4 and raw.max() <= 16


def test_digits_split_is_deterministic_stratified_and_seeded():
    a, b, c = DigitsDataModule(), DigitsDataModule(), DigitsDataModule(seed=1)
    for dm in (a, b, c):
        dm.setup()
    assert torch.equal(a.val_set.tensors[0], b.val_set.tensors[0])
    assert torch.equal(a.val_set.tensors[1], b.val_set.tensors[1])
    assert not torch.equal(a.val_set.tensors[1], c.val_set.tensors[1])
    val_counts = torch.bincount(a.val_set.tensors[1], minlength=10)
    all_counts = val_counts + torch.bincount(a.train_set.tensors[1], minlength=10)
    assert torch.all((val_counts - 0.25 * all_counts).abs() <= 1)
    # validation order is fixed; training order is shuffled reproducibly from the seed
    assert torch.equal(next(iter(a.val_dataloader()))[1], a.val_set.tensors[1][:256])
    assert torch.equal(next(iter(a.train_dataloader()))[1], next(iter(b.train_dataloader()))[1])


def test_digits_runs_under_trainer_validate():
    class Probe(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(64, 10)
            self.seen = 0

        def validation_step(self, batch, batch_idx):
            self.seen += len(batch[1])
            return self.fc(batch[0].flatten(1)).sum()

    dm, model = DigitsDataModule(), Probe()
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        use_distributed_sampler=False,
    )
    trainer.validate(model, datamodule=dm, verbose=False)
    assert model.seen == 450


# ------------------------------------------------------------------------ CIFAR, torchvision


def test_cifar10_torchvision_layout(tmp_path):
    labels = _write_cifar10_pickles(tmp_path)
    dm = CIFAR10DataModule(tmp_path, num_workers=0, augment=False, check_md5=False)
    assert (dm.num_classes, dm.in_channels, dm.image_size) == (10, 3, 32)
    assert dm.class_names == list(CIFAR10_CLASSES)
    dm.setup("fit")
    assert len(dm.train_set) == 10
    assert dm.train_set.targets == [y for b in range(1, 6) for y in labels[f"data_batch_{b}"]]
    images, targets = next(iter(dm.val_dataloader()))
    assert images.shape == (3, 3, 32, 32) and images.dtype == torch.float32
    assert targets.tolist() == [7, 0, 3]
    mean, std = torch.tensor(CIFAR10_MEAN), torch.tensor(CIFAR10_STD)
    expected = (torch.tensor([200.0, 201.0, 202.0]) / 255 - mean) / std
    assert torch.allclose(images[0, :, 5, 5], expected, atol=1e-5)
    assert torch.allclose(images[0].mean((1, 2)), expected, atol=1e-5)


def test_cifar10_torchvision_eval_split_alone(tmp_path):
    """Simulating needs only test_batch + batches.meta; torchvision itself wants every file."""
    _write_cifar10_pickles(tmp_path, with_train=False)
    dm = CIFAR10DataModule(tmp_path, num_workers=0, check_md5=False, layout="torchvision")
    dm.setup("validate")
    assert len(dm.val_set) == 3 and dm.train_set is None
    with pytest.raises(FileNotFoundError) as excinfo:
        dm.setup("fit")
    _assert_one_line(excinfo, tmp_path / "cifar-10-batches-py" / "data_batch_1")


def test_cifar10_md5_check_rejects_non_official_files(tmp_path):
    _write_cifar10_pickles(tmp_path)
    with pytest.raises(ValueError) as excinfo:
        CIFAR10DataModule(tmp_path, num_workers=0).setup("validate")
    _assert_one_line(excinfo, tmp_path / "cifar-10-batches-py", "md5", "dataset.check_md5=false")


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_cifar10_md5_check_is_torchvisions_over_the_split_files(tmp_path, monkeypatch):
    """torchvision checks the sums of its own file table, restricted to the split read."""
    _write_cifar10_pickles(tmp_path, with_train=False)
    folder = tmp_path / "cifar-10-batches-py"
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", _md5(folder / "test_batch")]])
    meta = {**CIFAR10.meta, "md5": _md5(folder / "batches.meta")}
    monkeypatch.setattr(CIFAR10, "meta", meta)
    dm = CIFAR10DataModule(tmp_path, num_workers=0)  # check_md5=True; no training files
    dm.setup("validate")
    assert dm.val_set.targets == [7, 0, 3]
    monkeypatch.setattr(CIFAR10, "meta", {**meta, "md5": "0" * 32})
    with pytest.raises(ValueError, match="dataset.check_md5=false"):
        CIFAR10DataModule(tmp_path, num_workers=0).setup("validate")


def test_nothing_downloads(tmp_path, monkeypatch):
    def no_download(self):
        raise AssertionError("download attempted")

    monkeypatch.setattr(CIFAR10, "download", no_download)
    _write_cifar10_pickles(tmp_path, with_train=False)
    dm = CIFAR10DataModule(tmp_path, num_workers=0, check_md5=False)
    dm.setup("validate")
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        dm.setup("fit")


def test_check_md5_key_from_the_preset(tmp_path):
    _write_cifar10_pickles(tmp_path)
    cfg = _preset("cifar10")
    with pytest.raises(ValueError, match="dataset.check_md5=false"):
        instantiate_datamodule(cfg, seed=0, root=str(tmp_path), num_workers=0).setup("validate")
    cfg.check_md5 = False  # what the command-line override dataset.check_md5=false sets
    dm = instantiate_datamodule(cfg, seed=0, root=str(tmp_path), num_workers=0)
    dm.setup("validate")
    assert len(dm.val_set) == 3 and dm.class_names == list(CIFAR10_CLASSES)


def test_cifar10_corrupt_pickle_is_one_line(tmp_path):
    _write_cifar10_pickles(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(ValueError) as excinfo:
        CIFAR10DataModule(tmp_path, num_workers=0, check_md5=False).setup("validate")
    _assert_one_line(excinfo, tmp_path / "cifar-10-batches-py")


def test_cifar100_torchvision_layout(tmp_path):
    _write_cifar100_pickles(tmp_path)
    dm = CIFAR100DataModule(tmp_path, num_workers=0, augment=False, check_md5=False)
    assert dm.num_classes == 100 and dm.class_names == list(CIFAR100_CLASSES)
    dm.setup()
    assert dm.train_set.targets == [99, 0, 42, 5]
    images, targets = next(iter(dm.test_dataloader()))
    assert images.shape == (2, 3, 32, 32) and targets.tolist() == [17, 63]


def test_cifar_train_augmentation_is_the_reference_list(tmp_path):
    _write_cifar10_pickles(tmp_path)
    dm = CIFAR10DataModule(tmp_path, num_workers=0, check_md5=False)
    dm.setup("fit")
    steps = dm.train_set.transform.transforms
    assert [type(t) for t in steps] == [
        T.RandomChoice, T.Resize, T.CenterCrop, T.RandomCrop, T.RandomHorizontalFlip,
        T.RandomRotation, T.ToTensor, T.Normalize,
    ]  # fmt: skip
    jitters = steps[0].transforms
    assert [(j.brightness, j.contrast, j.saturation, j.hue) for j in jitters] == [
        ((0.5, 1.5), None, None, None),
        (None, (0.5, 1.5), None, None),
        (None, None, (0.5, 1.5), None),
        (None, None, None, (-0.3, 0.3)),
    ]
    assert tuple(steps[1].size) == (32, 32) and steps[3].size == (32, 32) and steps[3].padding == 4
    assert list(steps[5].degrees) == [-15.0, 15.0]
    assert list(steps[7].mean) == list(CIFAR10_MEAN)
    assert [type(t) for t in dm.val_set.transform.transforms] == [T.Resize, T.ToTensor, T.Normalize]
    images, _ = next(iter(dm.train_dataloader()))
    assert images.shape == (10, 3, 32, 32)


# ------------------------------------------------------------------------- CIFAR, reference


def test_cifar10_reference_folders_label_by_class_directories(tmp_path):
    _write_cifar10_folders(tmp_path)
    dm = CIFAR10DataModule(tmp_path, num_workers=0, augment=False, num_classes=3)
    assert dm.num_classes == 3 and dm.class_names == ["0", "1", "2"]  # until setup reads them
    dm.setup()
    assert dm.class_names == ["airplane", "cat", "dog"]
    assert isinstance(dm.train_set, ImageFolder)
    # the stray file sorts first in listdir; with Q25 fixed it takes no index
    names = [(Path(p).parent.name, Path(p).name, y) for p, y in dm.train_set.samples]
    assert names == [
        ("airplane", "img_0.png", 0), ("airplane", "img_1.png", 0),
        ("cat", "img_0.png", 1), ("cat", "img_1.png", 1),
        ("dog", "img_0.png", 2), ("dog", "img_1.png", 2),
    ]  # fmt: skip
    images, targets = next(iter(dm.val_dataloader()))
    assert images.shape == (3, 3, 32, 32) and targets.tolist() == [0, 1, 2]
    pixel = images[:, 0, 0, 0] * CIFAR10_STD[0] + CIFAR10_MEAN[0]  # un-normalise red
    assert torch.allclose(pixel * 255, torch.tensor([0.0, 50.0, 100.0]), atol=1e-3)


def test_cifar10_reference_accepts_valid_dir_and_eval_only(tmp_path):
    _write_cifar10_folders(tmp_path, splits=("valid",))
    dm = CIFAR10DataModule(tmp_path, num_workers=0, layout="reference", num_classes=3)
    dm.setup("validate")
    assert dm.val_set.targets == [0, 1, 2]


def test_cifar100_csv_layout_sorted_by_filename_and_skips_unlabelled(tmp_path):
    _write_cifar100_csv_layout(tmp_path)
    dm = CIFAR100DataModule(tmp_path, num_workers=0, augment=False)
    assert dm.num_classes == 100 and dm.class_names == list(CIFAR100_CLASSES)
    dm.setup()
    assert [(Path(p).name, y) for p, y in dm.train_set.samples] == [
        ("1.jpg", 11), ("10.jpg", 99), ("2.jpg", 22), ("3.jpg", 33),
    ]  # fmt: skip
    assert [(Path(p).name, y) for p, y in dm.val_set.samples] == [("4.jpg", 44), ("5.jpg", 55)]
    images, targets = next(iter(dm.val_dataloader()))
    assert images.shape == (2, 3, 32, 32) and targets.dtype == torch.int64


def test_cifar100_csv_missing_column_is_one_line(tmp_path):
    _write_cifar100_csv_layout(tmp_path)
    _write_csv(tmp_path / "test.csv", [("4.jpg", 1)], header=("image_id", "label"))
    with pytest.raises(ValueError) as excinfo:
        CIFAR100DataModule(tmp_path, num_workers=0).setup("validate")
    _assert_one_line(excinfo, tmp_path / "test.csv", "fine_labels")


def test_cifar100_csv_label_out_of_range(tmp_path):
    _write_cifar100_csv_layout(tmp_path)
    _write_csv(tmp_path / "test.csv", [("4.jpg", 100)])
    with pytest.raises(ValueError) as excinfo:
        CIFAR100DataModule(tmp_path, num_workers=0).setup("validate")
    _assert_one_line(excinfo, tmp_path / "test.csv", "[0, 100)")


# ---------------------------------------------------------------------------------- ImageNet


@pytest.mark.parametrize("val_name", ["valid", "val"])
def test_imagenet_folders_and_direct_resize(tmp_path, val_name):
    _write_imagenet(tmp_path, val_name)
    dm = ImageNetDataModule(tmp_path, num_workers=0, augment=False, num_classes=2)
    assert dm.num_classes == 2 and dm.image_size == 224 and dm.in_channels == 3
    dm.setup()
    assert dm.class_names == ["n01440764", "n01443537"]
    assert dm.train_set.targets == [0, 0, 1, 1]
    images, targets = next(iter(dm.val_dataloader()))
    assert images.shape == (2, 3, 224, 224) and targets.tolist() == [0, 1]
    # Q23: a direct (distorting) resize keeps the red left quarter of the 64x32 image
    red = images[0, 0, 112, 5] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    assert red > 0.8


def test_imagenet_center_crop_option(tmp_path):
    _write_imagenet(tmp_path)
    dm = ImageNetDataModule(tmp_path, num_workers=0, center_crop=True, num_classes=2)
    dm.setup("validate")
    steps = dm.val_set.transform.transforms
    assert [type(t) for t in steps] == [T.Resize, T.CenterCrop, T.ToTensor, T.Normalize]
    assert steps[0].size == 256 and steps[1].size == (224, 224)
    images, _ = next(iter(dm.val_dataloader()))
    assert images.shape == (2, 3, 224, 224)
    # resize 64x32 -> 512x256, crop the middle 224: the red left quarter (x < 128) is gone
    red = images[0, 0, 112, 5] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    assert red < 0.2


def test_imagenet_train_augmentation_uses_origin_and_input_sizes(tmp_path):
    _write_imagenet(tmp_path)
    dm = ImageNetDataModule(tmp_path, num_workers=0, batch_size=4, num_classes=2)
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 224, 224) and sorted(targets.tolist()) == [0, 0, 1, 1]
    steps = dm.train_set.transform.transforms
    assert tuple(steps[1].size) == (256, 256) and steps[2].size == (256, 256)
    assert steps[3].size == (224, 224)


# ------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "cls", [CIFAR10DataModule, CIFAR100DataModule, ImageNetDataModule], ids=lambda c: c.args[0]
)
def test_missing_root_is_one_line_after_a_working_init(tmp_path, cls):
    root = tmp_path / "nowhere"
    dm = cls(root, num_workers=0)  # the preset's sizes are known before setup
    assert dm.num_classes == len(dm.class_names) in (10, 100, 1000)
    with pytest.raises(FileNotFoundError) as excinfo:
        dm.setup()
    _assert_one_line(excinfo, root, "expected", "dataset.root")


def test_cifar10_missing_split_folder(tmp_path):
    _write_cifar10_folders(tmp_path, splits=("train",))
    with pytest.raises(FileNotFoundError) as excinfo:
        CIFAR10DataModule(tmp_path, num_workers=0, num_classes=3).setup("validate")
    _assert_one_line(excinfo, tmp_path, "test/")


def test_imagenet_missing_split_folder(tmp_path):
    _write_imagenet(tmp_path)
    shutil.rmtree(tmp_path / "valid")
    dm = ImageNetDataModule(tmp_path, num_workers=0, num_classes=2)
    with pytest.raises(FileNotFoundError) as excinfo:
        dm.setup("validate")
    _assert_one_line(excinfo, tmp_path, "valid/ or val/")


def test_empty_class_folder_set(tmp_path):
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "stray.png").write_bytes(b"")
    with pytest.raises(FileNotFoundError) as excinfo:
        CIFAR10DataModule(tmp_path, num_workers=0).setup("validate")
    _assert_one_line(excinfo, tmp_path / "test", "<class>")


def test_unrecognised_layout(tmp_path):
    (tmp_path / "images").mkdir()
    for cls in (CIFAR10DataModule, CIFAR100DataModule, ImageNetDataModule):
        with pytest.raises(FileNotFoundError) as excinfo:
            cls(tmp_path, num_workers=0).setup()
        _assert_one_line(excinfo, f"not found at {tmp_path}:", "expected", "set dataset.root=DIR")
    with pytest.raises(ValueError) as excinfo:
        CIFAR10DataModule(tmp_path, layout="folders")
    _assert_one_line(excinfo, "dataset.layout", "auto, torchvision, reference")


# ----------------------------------------------------------- bad input, caught in setup()


def test_class_count_differs_from_the_preset(tmp_path):
    """7 class folders under a cifar10 root: the data is named, not the checkpoint's head."""
    for k in range(7):
        _png(tmp_path / "test" / CIFAR10_CLASSES[k] / "a.png", k)
    cfg = _preset("cifar10")
    dm = instantiate_datamodule(cfg, seed=0, root=str(tmp_path), num_workers=0)
    assert dm.num_classes == 10
    with pytest.raises(ValueError) as excinfo:
        dm.setup("validate")
    _assert_one_line(
        excinfo, tmp_path, "7 class folders", "dataset=cifar10 expects 10", "dataset.num_classes=7"
    )
    dm = instantiate_datamodule(cfg, seed=0, root=str(tmp_path), num_workers=0, num_classes=7)
    dm.setup("validate")
    assert dm.class_names == list(CIFAR10_CLASSES[:7]) and dm.val_set.targets == list(range(7))


def test_class_count_of_the_pickles_meta(tmp_path):
    _write_cifar100_pickles(tmp_path)
    meta = {"fine_label_names": list(CIFAR100_CLASSES[:20]), "coarse_label_names": ["c"] * 20}
    _pickle(tmp_path / "cifar-100-python" / "meta", meta)
    with pytest.raises(ValueError) as excinfo:
        CIFAR100DataModule(tmp_path, num_workers=0, check_md5=False).setup("validate")
    _assert_one_line(excinfo, "meta", "20 class names", "expects 100", "dataset.num_classes=20")


def test_imagenet_class_count(tmp_path):
    _write_imagenet(tmp_path)
    with pytest.raises(ValueError) as excinfo:
        ImageNetDataModule(tmp_path, num_workers=0).setup("validate")
    _assert_one_line(excinfo, "2 class folders", "dataset=imagenet expects 1000")


def test_root_one_level_too_shallow_suggests_the_folder(tmp_path):
    """root/CIFAR10/cifar-10-batches-py exists: dataset.root=root is one level off."""
    _write_cifar10_pickles(tmp_path / "CIFAR10", with_train=False)
    (tmp_path / "README.txt").write_text("not a dataset")
    with pytest.raises(FileNotFoundError) as excinfo:
        CIFAR10DataModule(tmp_path, num_workers=0, check_md5=False).setup("validate")
    _assert_one_line(excinfo, f"did you mean dataset.root={tmp_path / 'CIFAR10'}?")
    _write_imagenet(tmp_path / "imagenet")
    with pytest.raises(FileNotFoundError) as excinfo:
        ImageNetDataModule(tmp_path, num_workers=0, num_classes=2).setup("validate")
    _assert_one_line(excinfo, f"did you mean dataset.root={tmp_path / 'imagenet'}?")


def test_root_one_level_too_deep_suggests_the_parent(tmp_path):
    _write_cifar10_folders(tmp_path, splits=("train", "test"))
    with pytest.raises(FileNotFoundError) as excinfo:
        CIFAR10DataModule(tmp_path / "test", num_workers=0).setup("validate")
    _assert_one_line(excinfo, f"did you mean dataset.root={tmp_path}?")
    _write_cifar100_csv_layout(tmp_path / "c100")
    with pytest.raises(FileNotFoundError) as excinfo:
        CIFAR100DataModule(tmp_path / "c100" / "test_images", num_workers=0).setup("validate")
    _assert_one_line(excinfo, f"did you mean dataset.root={tmp_path / 'c100'}?")


def test_torchvision_folder_itself_is_accepted_as_root(tmp_path):
    _write_cifar10_pickles(tmp_path, with_train=False)
    dm = CIFAR10DataModule(tmp_path / "cifar-10-batches-py", num_workers=0, check_md5=False)
    dm.setup("validate")
    assert dm.val_set.targets == [7, 0, 3]


# ------------------------------------------------------------------- presets and instantiate


@pytest.mark.parametrize("preset", ["digits", "cifar10", "cifar100", "imagenet", "pycode"])
def test_presets_instantiate_by_target(tmp_path, preset):
    cfg = _preset(preset)
    root = {} if preset in ("digits", "pycode") else {"root": str(tmp_path)}
    dm = instantiate_datamodule(cfg, seed=3, **root)
    assert type(dm) is DataModule and cfg._target_ == "lightning_modules.data.DataModule"
    assert dm.name == preset and dm.seed == 3 and dm.batch_size == cfg.batch_size
    assert dm.val_batch_size == cfg.val_batch_size
    classes = {"cifar100": 100, "imagenet": 1000, "pycode": 256}.get(preset, 10)
    assert dm.num_classes == classes
    assert dm.num_classes == len(dm.class_names) or dm.task == "language_modeling"
    for split in ("train", "val"):  # the shared keys reach both splits by interpolation
        node = dm._nodes[split]
        assert node["_target_"].startswith("lightning_modules.datasets.")
        assert node["train"] is (split == "train")
        if root:
            assert node["root"] == str(tmp_path)


def test_seed_reaches_the_split_and_follows_the_run(compose):
    """digits' split is seeded by dataset.seed, which is the run's seed unless set."""
    a = builders.build_datamodule(compose("simulate", "seed=1"))
    b = builders.build_datamodule(compose("simulate", "seed=0", "dataset.seed=1"))
    assert a.seed == b.seed == 1 and a._nodes["val"]["seed"] == 1
    c = builders.build_datamodule(compose("simulate", "seed=0"))
    for dm in (a, b, c):
        dm.setup("validate")
    assert torch.equal(a.val_set.tensors[1], b.val_set.tensors[1])
    assert not torch.equal(a.val_set.tensors[1], c.val_set.tensors[1])


def test_instantiate_bad_keyword_is_one_line(tmp_path):
    cfg = _preset("cifar10")
    with pytest.raises(ValueError) as excinfo:
        instantiate_datamodule(cfg, seed=0, root=str(tmp_path), check_md6=False)
    _assert_one_line(excinfo, "dataset=cifar10", "check_md6", "valid keys:", "check_md5")
    with pytest.raises(ValueError) as excinfo:  # the constructor's own error, not Hydra's
        instantiate_datamodule(cfg, seed=0, root=str(tmp_path), batch_size=0)
    message = _assert_one_line(excinfo, "dataset.batch_size must be a positive int, got 0")
    assert "Error in call" not in message
    with pytest.raises(ValueError) as excinfo:  # the schema's type check, on overrides too
        instantiate_datamodule(cfg, seed=0, root=str(tmp_path), val_batch_size="abc")
    _assert_one_line(excinfo, "dataset.val_batch_size='abc'")
    cfg = OmegaConf.to_container(cfg)
    del cfg["root"]
    with pytest.raises(ValueError) as excinfo:
        instantiate_datamodule(cfg, seed=0)
    _assert_one_line(excinfo, "needs root", "dataset.root=")
    with pytest.raises(ValueError) as excinfo:
        instantiate_datamodule({"name": "mnist"}, seed=0)
    _assert_one_line(excinfo, "dataset=mnist has no _target_")


def test_a_dataset_is_a_node_not_a_class(tmp_path):
    """A dataset of one's own in class folders: a plain node of targets, no new class."""
    _write_cifar10_folders(tmp_path, splits=("train", "valid"))
    split = {
        "_target_": "lightning_modules.datasets.image_folders",
        "root": "${..root}",
        "title": "my images",
        "transform": {"_target_": "torchvision.transforms.ToTensor"},
    }
    node = {
        "_target_": "lightning_modules.data.DataModule",
        "name": "mine",
        "root": str(tmp_path),
        "num_classes": 3,
        "batch_size": 4,
        "train": {**split, "train": True},
        "val": {**split, "train": False},
    }
    dm = instantiate_datamodule(node, seed=1)
    assert isinstance(dm, DataModule) and dm.batch_size == 4 and dm.seed == 1
    dm.setup()
    assert dm.class_names == ["airplane", "cat", "dog"] and dm.val_set.targets == [0, 1, 2]
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 32, 32) and len(dm.train_set) == 6
    with pytest.raises(FileNotFoundError) as excinfo:  # its layout detector gives the hints
        instantiate_datamodule({**node, "root": str(tmp_path / "valid")}, seed=0).setup()
    _assert_one_line(excinfo, "my images data not found", f"did you mean dataset.root={tmp_path}?")
    # built Datasets are accepted too (Python callers)
    dm = DataModule(val=dm.val_set, num_classes=3)
    dm.setup("validate")
    assert len(dm.val_set) == 3
    with pytest.raises(ValueError, match="has no training split"):
        dm.setup("fit")


def test_digits_split_is_pinned_for_seed_0():
    """The split `python simulate.py` evaluates (99.33 %): its size and first indices."""
    dm = DigitsDataModule()
    dm.setup("validate")
    labels = dm.val_set.tensors[1]
    assert len(labels) == 450 and torch.bincount(labels).tolist() == DIGITS_SEED0_VAL_COUNTS
    assert labels[:12].tolist() == DIGITS_SEED0_VAL_HEAD


# ------------------------------------------------------------------------------ distribution


@pytest.mark.parametrize("block_size", [1, 3])
def test_unpadded_sampler_covers_each_index_once(block_size):
    for n in (0, 1, 2, 5, 7, 10, 13):
        for world in range(1, 5):
            shards = [
                list(
                    UnpaddedDistributedSampler(n, num_replicas=world, rank=r, block_size=block_size)
                )
                for r in range(world)
            ]
            assert sorted(i for s in shards for i in s) == list(range(n))
            assert [
                len(UnpaddedDistributedSampler(n, world, r, block_size)) for r in range(world)
            ] == [len(s) for s in shards]
            if block_size == 1:
                assert max(map(len, shards)) - min(map(len, shards)) <= 1
            # shards start on block boundaries: per-rank batches are single-process batches
            assert all(s[0] % block_size == 0 for s in shards if s)


def test_unpadded_sampler_validates_arguments():
    with pytest.raises(ValueError, match="rank"):
        UnpaddedDistributedSampler(5, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="torch.distributed"):
        UnpaddedDistributedSampler(5)


def test_distributed_loaders(monkeypatch):
    dm = DigitsDataModule(val_batch_size=100)
    dm.setup()
    assert first_sample_index(dm.val_dataloader()) == 0  # not distributed
    world, seen = 3, []
    for rank in range(world):
        monkeypatch.setattr(data, "rank_and_world", lambda r=rank: (r, world))
        val_loader = dm.val_dataloader()
        assert isinstance(val_loader.sampler, UnpaddedDistributedSampler)
        # whole batches of consecutive samples; the rank's first global index is known
        assert first_sample_index(val_loader) == len(seen)
        batches = [y for _, y in val_loader]
        assert all(len(y) == 100 for y in batches[:-1])
        seen.extend(torch.cat(batches).tolist())
        train_sampler = dm.train_dataloader().sampler
        assert isinstance(train_sampler, DistributedSampler)
        assert train_sampler.shuffle and train_sampler.seed == dm.seed
        assert (train_sampler.rank, train_sampler.num_replicas) == (rank, world)
    assert seen == dm.val_set.tensors[1].tolist()  # every sample once, in file order


def test_first_sample_index_refuses_shuffled_loaders():
    loader = DataLoader(list(range(10)), shuffle=True)
    with pytest.raises(ValueError, match="RandomSampler does not yield consecutive samples"):
        first_sample_index(loader)
    sharded = DataLoader(list(range(10)), sampler=UnpaddedDistributedSampler(10, 2, 1, 3))
    assert first_sample_index(sharded) == 6 and list(sharded.sampler) == [6, 7, 8, 9]


def test_transform_builders():
    train = build_train_transform(224, 256, IMAGENET_MEAN, IMAGENET_STD)
    assert len(train.transforms) == 8
    with pytest.raises(ValueError):
        build_eval_transform(224, IMAGENET_MEAN, IMAGENET_STD, center_crop=True)


# ------------------------------------------------------------------- typed schemas (deltas)


@pytest.mark.parametrize("preset", sorted(p.stem for p in CONF.glob("*.yaml")))
def test_dataset_presets_list_only_deltas_on_their_schema(preset):
    raw = OmegaConf.to_container(OmegaConf.load(CONF / f"{preset}.yaml"))
    (base,) = [d for d in raw.pop("defaults") if d != "_self_"]
    key = base.removeprefix("/dataset_schema").removeprefix("_").removesuffix("@_here_")
    schema = data.dataset_schema(key)()
    restated = {k: v for k, v in raw.items() if getattr(schema, k) == v}
    assert not restated, f"dataset/{preset} restates the constructors' defaults {restated}"


@pytest.mark.parametrize("key", sorted(data.SCHEMAS))
def test_schema_defaults_are_the_constructors(key):
    import dataclasses
    import inspect

    schema = data.dataset_schema(key)()
    assert schema._target_ == "lightning_modules.data.DataModule"
    assert schema.seed == "${oc.select:seed,0}"  # the run's seed unless set
    owners = [*data.SCHEMAS[key], DataModule]  # a builder's default wins over the DataModule's
    names = {f.name for f in dataclasses.fields(schema)} - {"_target_", "seed", "train", "val"}
    for name in names:
        params = [inspect.signature(fn).parameters.get(name) for fn in owners]
        params = [p for p in params if p is not None]
        with_default = [p for p in params if p.default is not p.empty]
        want = with_default[0].default if with_default else "???"
        want = list(want) if isinstance(want, tuple) else want
        assert getattr(schema, name) == want, name
    assert set(inspect.signature(DataModule).parameters) <= names | {"seed", "train", "val"}


def test_cifar_evaluates_with_the_reference_batch():
    """CIFAR-100's preset used to say 128 and the code 512: now only the preset says it."""
    for name in ("cifar10", "cifar100"):
        cfg = builders.compose("simulate", [f"dataset={name}"])
        assert builders.build_datamodule(cfg).val_batch_size == 512


@pytest.mark.parametrize(
    "overrides",
    [
        ["dataset.val_batch_size=abc"],
        ["dataset=cifar10", "dataset.augment=maybe"],
        ["dataset=cifar10", "dataset.layout=folders"],
        ["dataset=pycode", "dataset.block_size=long"],
        ["dataset=imagenet", "dataset.num_classes=1k"],
        ["dataset=digits", "dataset.check_md5=false"],  # a key of another dataset
        ["dataset.val_fractoin=0.2"],
    ],
)
def test_wrong_dataset_type_or_key_fails_at_compose(overrides):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as excinfo:
        builders.compose("simulate", overrides)
    assert overrides[-1] in str(excinfo.value)  # Hydra names the override it refused


def test_readme_dataset_of_ones_own_is_one_yaml_file(tmp_path):
    """The README's `dataset=mine` example, merged on its schema as Hydra composes it."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in readme.split("```yaml\n")[1:]]
    (block,) = [b for b in blocks if "/dataset_schema_folders@_here_" in b]
    raw = OmegaConf.create(block)
    assert list(raw.pop("defaults")) == ["/dataset_schema_folders@_here_", "_self_"]
    cfg = OmegaConf.merge(OmegaConf.structured(data.dataset_schema("folders")), raw)
    for k in range(5):
        for split in ("train", "valid"):
            _png(tmp_path / split / f"class{k}" / "a.png", 40 * k)
    dm = instantiate_datamodule(cfg, seed=0, root=str(tmp_path))
    dm.setup()
    assert dm.name == "mine" and dm.class_names == [f"class{k}" for k in range(5)]
    images, targets = next(iter(dm.val_dataloader()))
    assert images.shape == (5, 3, 32, 32) and targets.tolist() == [0, 1, 2, 3, 4]
    assert type(dm.train_set.transform.transforms[0]) is T.RandomChoice  # augmented
    assert type(dm.val_set.transform.transforms[0]) is T.Resize
    # the example leaves resize_size unwired: setting it would do nothing, so it fails
    with pytest.raises(ValueError, match="dataset.resize_size=40 is read by neither"):
        instantiate_datamodule(cfg, seed=0, root=str(tmp_path), resize_size=40)


def test_a_shared_key_no_split_reads_is_one_line(tmp_path):
    """Settings that would do nothing fail: a key the train/val nodes never interpolate."""
    node = {
        "_target_": "lightning_modules.data.DataModule",
        "num_classes": 10,
        "val_fractoin": 0.5,
        "val": {"_target_": "lightning_modules.datasets.digits", "train": False},
    }
    with pytest.raises(ValueError) as excinfo:
        instantiate_datamodule(node, seed=0)
    _assert_one_line(excinfo, "dataset.val_fractoin=0.5 is read by neither dataset.train nor")
    node["val_fractoin"] = 0.25  # a typo'd key does nothing, even at the builder's default
    with pytest.raises(ValueError, match="val_fractoin=0.25 is read by neither"):
        instantiate_datamodule(node, seed=0)
