"""LightningDataModules: digits (offline default), CIFAR-10/100 and ImageNet.

Transforms and normalisation constants follow acim-model.md §9.5; on-disk layouts follow §9.6
(read by :mod:`lightning_modules.datasets`), with quirk Q25 fixed (labels index class
*directories* only; CIFAR-100 files are sorted by name, so its batches cannot match the
reference's unknowable ``listdir`` order) and Q23 reproduced (ImageNet evaluation resizes straight
to 224x224 unless ``center_crop=True``).

The presets in ``conf/dataset/*.yaml`` name their class by ``_target_``;
:func:`instantiate_datamodule` builds one. ``num_classes``, ``in_channels`` and ``image_size``
are known right after ``__init__`` (``num_classes`` is the preset's, ``dataset.num_classes``);
``setup`` reads the data, fails in one line when it is missing, misplaced (``did you mean
dataset.root=...?``), corrupt or has another class count than ``num_classes``, and replaces the
standard ``class_names`` by those found on disk. Call ``setup`` before sizing a model on it.

Evaluation loaders never shuffle. Under ``torch.distributed`` (world size > 1; the Trainer runs with
``use_distributed_sampler=False``) they shard with
:class:`~lightning_modules.sampler.UnpaddedDistributedSampler` in blocks of the evaluation batch
size, so every sample is counted exactly once and every rank sees single-process batches; the
training loader uses a seeded ``DistributedSampler``.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import os
import pickle
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset
from torchvision import transforms as T

from .datasets import (
    CIFAR100CSV,
    IMAGE_EXTENSIONS,
    CIFARSplit10,
    CIFARSplit100,
    ClassFolders,
    TokenBlocks,
    class_dirs,
    encode_files,
    split_by_file,
    text_files,
)
from .sampler import UnpaddedDistributedSampler, first_sample_index, rank_and_world

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_CLASSES",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "ClassificationDataModule",
    "DigitsDataModule",
    "ImageNetDataModule",
    "TextDataModule",
    "UnpaddedDistributedSampler",
    "build_eval_transform",
    "DATAMODULES",
    "build_train_transform",
    "datamodule_schema",
    "first_sample_index",
    "instantiate_datamodule",
]

# acim-model.md §9.5
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Official class orders (alphabetical, so they equal the reference's sorted-folder indices).
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox",
    "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom",
    "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake",
    "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone",
    "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale",
    "willow_tree", "wolf", "woman", "worm",
)  # fmt: skip

# --------------------------------------------------------------------------- transforms (§9.5)


def build_train_transform(
    image_size: int, resize_size: int, mean: Sequence[float], std: Sequence[float]
) -> T.Compose:
    """The reference's training augmentation (acim-model.md §9.5), in its order.

    Args:
        image_size: Network input size (``input_size``): the random crop's size.
        resize_size: The reference's ``origin_size``: square resize and center crop before it.
        mean: Per-channel normalisation mean.
        std: Per-channel normalisation std.
    """
    return T.Compose(
        [
            T.RandomChoice(
                [
                    T.ColorJitter(brightness=0.5),
                    T.ColorJitter(contrast=0.5),
                    T.ColorJitter(saturation=0.5),
                    T.ColorJitter(hue=0.3),
                ]
            ),
            T.Resize((resize_size, resize_size)),
            T.CenterCrop(resize_size),
            T.RandomCrop(image_size, padding=4),
            T.RandomHorizontalFlip(),
            T.RandomRotation(15),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def build_eval_transform(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    center_crop: bool = False,
    resize_size: int | None = None,
) -> T.Compose:
    """Validation/test transform (acim-model.md §9.5, quirk Q23).

    Args:
        image_size: Network input size.
        mean: Per-channel normalisation mean.
        std: Per-channel normalisation std.
        center_crop: False (reference): resize straight to ``(image_size, image_size)``. True:
            resize the shorter side to ``resize_size``, then center-crop ``image_size``.
        resize_size: Shorter-side size before the center crop; needed when ``center_crop``.
    """
    if center_crop:
        if resize_size is None:
            raise ValueError("center_crop=True needs resize_size (e.g. 256 for a 224 crop)")
        resize = [T.Resize(resize_size), T.CenterCrop(image_size)]
    else:
        resize = [T.Resize((image_size, image_size))]
    return T.Compose([*resize, T.ToTensor(), T.Normalize(mean, std)])


_ROOT_HINT = "set dataset.root=DIR"


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _first_dir(root: Path, names: Sequence[str]) -> Path | None:
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None


def _union_class_dirs(root: Path, split_names: Sequence[Sequence[str]]) -> list[str]:
    """Sorted class directories over every split present (one folder per split)."""
    classes: set[str] = set()
    for names in split_names:
        split_dir = _first_dir(root, names)
        if split_dir is not None:
            classes.update(class_dirs(split_dir))
    return sorted(classes)


def _check_labels(labels: Sequence[int], num_classes: int, where: Path) -> None:
    bad = [y for y in labels if not 0 <= y < num_classes]
    if bad:
        raise ValueError(
            f"labels in {where} must lie in [0, {num_classes}), found {min(bad)}..{max(bad)}"
        )


def _preview(names: Sequence[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


# ------------------------------------------------------------------------------- DataModules


class ClassificationDataModule(L.LightningDataModule):
    """Loaders shared by every DataModule; subclasses implement ``_load_split``.

    Attributes:
        name: The preset's name (``dataset=NAME``), used in messages.
        num_classes: Classes the model's head is sized for.
        in_channels: Image channels.
        image_size: Network input size.
        class_names: Class names in label order (the data's after ``setup``).
        train_set, val_set: The loaded splits (None until ``setup`` loads them).
    """

    num_classes: int
    in_channels: int
    image_size: int
    class_names: list[str]
    task = "classification"
    """What the batches are for: ``classification`` (image, label) or ``language_modeling``
    (tokens, next tokens); the runner picks its LightningModule by it."""

    def __init__(
        self, name: str, batch_size: int, val_batch_size: int, num_workers: int | None, seed: int
    ) -> None:
        super().__init__()
        for key, value in (("batch_size", batch_size), ("val_batch_size", val_batch_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"dataset.{key} must be a positive int, got {value!r}")
        if num_workers is None:
            num_workers = min(8, os.cpu_count() or 1)
        if num_workers < 0:
            raise ValueError(f"dataset.num_workers must be >= 0, got {num_workers}")
        self.name = name
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def _load_split(self, train: bool) -> Dataset:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        """Loads the training split for ``fit`` (or ``None``) and the validation split always."""
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self._load_split(train=True)
        if self.val_set is None:
            self.val_set = self._load_split(train=False)

    def _loader(self, dataset: Dataset, batch_size: int, **kwargs: Any) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches (seeded; a ``DistributedSampler`` under DDP)."""
        if self.train_set is None:
            self.setup("fit")
        dist = rank_and_world()
        if dist is not None:
            rank, world = dist
            sampler = DistributedSampler(
                self.train_set, num_replicas=world, rank=rank, shuffle=True, seed=self.seed
            )
            return self._loader(self.train_set, self.batch_size, sampler=sampler)
        generator = torch.Generator().manual_seed(self.seed)
        return self._loader(self.train_set, self.batch_size, shuffle=True, generator=generator)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in file order; each sample counted once across ranks.

        Under DDP each rank gets whole blocks of ``val_batch_size`` consecutive samples;
        :func:`first_sample_index` of the loader is the global index of its first sample.
        """
        if self.val_set is None:
            self.setup("validate")
        dist = rank_and_world()
        sampler = None
        if dist is not None:
            rank, world = dist
            sampler = UnpaddedDistributedSampler(
                self.val_set, num_replicas=world, rank=rank, block_size=self.val_batch_size
            )
        return self._loader(self.val_set, self.val_batch_size, shuffle=False, sampler=sampler)

    def test_dataloader(self) -> DataLoader:
        """The validation split (the reference tests on its validation folder)."""
        return self.val_dataloader()


class DigitsDataModule(ClassificationDataModule):
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes): the offline default.

    Images are ``float32 [1, 8, 8]``: pixel/16, then normalised with the training split's scalar
    mean and (population) std, stored in ``mean``/``std`` after ``setup``. The split is stratified
    and depends only on ``seed``.

    Args:
        batch_size: Training batch size.
        val_batch_size: Validation/test batch size.
        num_workers: DataLoader worker processes (0: load in the main process).
        val_fraction: Fraction of the images held out for validation, in (0, 1).
        name: Preset name, for messages.
        seed: Seeds the split and the training shuffle.
    """

    num_classes = 10
    in_channels = 1
    image_size = 8

    def __init__(
        self,
        batch_size: int = 64,
        val_batch_size: int = 256,
        num_workers: int = 0,
        val_fraction: float = 0.25,
        name: str = "digits",
        seed: int = 0,
    ) -> None:
        super().__init__(name, batch_size, val_batch_size, num_workers, seed)
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"dataset.val_fraction must lie in (0, 1), got {val_fraction}")
        self.val_fraction = val_fraction
        self.class_names = [str(i) for i in range(10)]
        self.mean: float | None = None
        self.std: float | None = None

    def setup(self, stage: str | None = None) -> None:
        """Loads, splits and normalises the whole set once (it is ~0.5 MB)."""
        if self.train_set is not None and self.val_set is not None:
            return
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
        labels = torch.from_numpy(digits.target.astype(np.int64))  # (N, 1, 8, 8), (N,)
        train_idx, val_idx = train_test_split(
            np.arange(len(labels)),
            test_size=self.val_fraction,
            stratify=digits.target,
            random_state=self.seed,
        )
        train_idx, val_idx = np.sort(train_idx), np.sort(val_idx)
        train_images = images[train_idx]
        self.mean = float(train_images.mean())
        self.std = float(train_images.std(correction=0))
        images = (images - self.mean) / self.std
        self.train_set = TensorDataset(images[train_idx], labels[train_idx])
        self.val_set = TensorDataset(images[val_idx], labels[val_idx])


class _ImageDataModule(ClassificationDataModule):
    """RGB image datasets on disk: root, layout detection, transforms, class-count check."""

    in_channels = 3
    _title: str  # the dataset's name in messages
    _expected: str  # the layouts, for error messages
    _mean: tuple[float, float, float]
    _std: tuple[float, float, float]
    _standard_classes: Sequence[str] = ()

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        name: str,
        num_classes: int,
        batch_size: int,
        val_batch_size: int,
        num_workers: int | None,
        image_size: int,
        resize_size: int | None,
        augment: bool,
        seed: int,
    ) -> None:
        super().__init__(name, batch_size, val_batch_size, num_workers, seed)
        if not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"dataset.image_size must be a positive int, got {image_size!r}")
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"dataset.num_classes must be a positive int, got {num_classes!r}")
        self.root = Path(root).expanduser()
        self.image_size = image_size
        self.resize_size = image_size if resize_size is None else resize_size
        self.augment = augment
        self.num_classes = num_classes
        if len(self._standard_classes) == num_classes:
            self.class_names = list(self._standard_classes)
        else:
            self.class_names = [str(i) for i in range(num_classes)]

    # layout ------------------------------------------------------------------------------------
    def _layout_at(self, path: Path) -> str | None:
        """The layout found at ``path`` (a name), or None."""
        raise NotImplementedError

    def _layout(self) -> str:
        """The layout at ``root``; FileNotFoundError naming the path and the expected layout,
        with ``did you mean dataset.root=...?`` when the parent or a sub-folder has one."""
        layout = self._layout_at(self.root) if self.root.is_dir() else None
        if layout is not None:
            return layout
        guess = self._guess_root()
        hint = f"did you mean dataset.root={guess}?" if guess is not None else _ROOT_HINT
        raise FileNotFoundError(
            f"{self._title} data not found at {self.root}: expected {self._expected}; {hint}"
        )

    def _guess_root(self) -> Path | None:
        """A folder one level above or below ``root`` holding the layout."""
        candidates = []
        if self.root.is_dir():
            candidates += [self.root / sub for sub in class_dirs(self.root)[:100]]
        candidates.append(self.root.parent)
        for path in candidates:
            if path != self.root and path.is_dir() and self._layout_at(path) is not None:
                return path
        return None

    def _take_classes(self, found: Sequence[str], where: Path, what: str) -> None:
        """Checks the classes on disk against ``num_classes`` and takes their names."""
        if len(found) != self.num_classes:
            raise ValueError(
                f"{self._title} at {where} has {len(found)} {what} ({_preview(found)}) but "
                f"dataset={self.name} expects {self.num_classes}: point dataset.root at the "
                f"whole dataset, or set dataset.num_classes={len(found)} to use these classes"
            )
        self.class_names = list(found)

    def _load_folders(self, train: bool, train_dirs: Sequence[str], eval_dirs: Sequence[str]):
        """``<split>/<class>/<image>``, labels indexing the class folders of all splits."""
        names = train_dirs if train else eval_dirs
        split_dir = _first_dir(self.root, names)
        if split_dir is None:
            raise FileNotFoundError(
                f"{self._title} {'training' if train else 'evaluation'} split not found under "
                f"{self.root}: expected {' or '.join(n + '/' for n in names)} "
                f"(layout {self._expected}); {_ROOT_HINT}"
            )
        classes = _union_class_dirs(self.root, (train_dirs, eval_dirs))
        expected = f"{split_dir}/<class>/<image>"
        if not classes:
            raise FileNotFoundError(f"no class folders in {split_dir}: expected {expected}")
        self._take_classes(classes, self.root, "class folders")
        dataset = ClassFolders(split_dir, classes, transform=self._transform(train))
        if not dataset.samples:
            raise FileNotFoundError(
                f"no images in the class folders of {split_dir}: expected {expected} "
                f"({', '.join('*' + e for e in IMAGE_EXTENSIONS)})"
            )
        return dataset

    def _transform(self, train: bool) -> T.Compose:
        if train and self.augment:
            return build_train_transform(self.image_size, self.resize_size, self._mean, self._std)
        return build_eval_transform(self.image_size, self._mean, self._std)


class _CIFARDataModule(_ImageDataModule):
    """Shared CIFAR logic: torchvision's pickles or the reference layout (see subclasses)."""

    _default_name: str
    _dataset_cls: type[CIFARSplit10] | type[CIFARSplit100]
    _torchvision_dir: str
    _layouts = ("auto", "torchvision", "reference")

    def __init__(
        self,
        root: str | os.PathLike,
        batch_size: int = 128,
        val_batch_size: int = 512,
        num_workers: int | None = None,
        layout: str = "auto",
        augment: bool = True,
        image_size: int = 32,
        resize_size: int | None = None,
        check_md5: bool = True,
        num_classes: int | None = None,
        name: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(
            root,
            name=name or self._default_name,
            num_classes=len(self._standard_classes) if num_classes is None else num_classes,
            batch_size=batch_size,
            val_batch_size=val_batch_size,
            num_workers=num_workers,
            image_size=image_size,
            resize_size=resize_size,
            augment=augment,
            seed=seed,
        )
        if layout not in self._layouts:
            raise ValueError(
                f"dataset.layout must be one of {', '.join(self._layouts)}, got {layout!r}"
            )
        self.layout = layout
        self.check_md5 = check_md5

    def _layout_at(self, path: Path) -> str | None:
        torchvision = (path / self._torchvision_dir).is_dir() or path.name == self._torchvision_dir
        if torchvision and self.layout in ("auto", "torchvision"):
            return "torchvision"
        if self.layout in ("auto", "reference") and self._has_reference_layout(path):
            return "reference"
        return None

    def _has_reference_layout(self, path: Path) -> bool:
        raise NotImplementedError

    def _load_split(self, train: bool) -> Dataset:
        if self._layout() == "torchvision":
            return self._load_torchvision_split(train)
        return self._load_reference_split(train)

    def _load_reference_split(self, train: bool) -> Dataset:
        raise NotImplementedError

    def _load_torchvision_split(self, train: bool) -> Dataset:
        in_root = (self.root / self._torchvision_dir).is_dir()
        base = self.root if in_root else self.root.parent
        folder = base / self._torchvision_dir
        cls = self._dataset_cls
        for filename in cls.split_files(train):
            if not (folder / filename).is_file():
                raise FileNotFoundError(
                    f"{self._title} file missing: {folder / filename}; expected torchvision's "
                    f"{self._torchvision_dir}/ with {', '.join(cls.split_files(True))} and "
                    f"{', '.join(cls.split_files(False)[:-1])}; {_ROOT_HINT}"
                )
        try:
            dataset = cls(
                base, train=train, transform=self._transform(train), check_md5=self.check_md5
            )
        except RuntimeError:  # torchvision's integrity check: the files are present (see above)
            if not self.check_md5:
                raise
            raise ValueError(
                f"{self._title} files in {folder} fail torchvision's md5 check (corrupt, or not "
                "the official release): re-extract them, or pass dataset.check_md5=false to "
                "read them unchecked"
            ) from None
        except (OSError, EOFError, pickle.UnpicklingError, KeyError, ValueError) as err:
            raise ValueError(
                f"cannot read {self._title} pickles in {folder}: {type(err).__name__}: "
                f"{_one_line(err)}; expected torchvision's {self._torchvision_dir}/ format"
            ) from None
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in dataset.classes]
        self._take_classes(names, folder / cls.meta["filename"], "class names")
        _check_labels(dataset.targets, self.num_classes, folder)
        return dataset


class CIFAR10DataModule(_CIFARDataModule):
    """CIFAR-10 from torchvision's pickles or the reference's class folders.

    Layouts (``layout="auto"`` picks whichever is present, torchvision's first):

    * ``"torchvision"``: ``root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``
      (``root`` may also be that folder). Only the requested split's files are read, and
      torchvision checks their md5 sums unless ``check_md5=False``.
    * ``"reference"`` (acim-model.md §9.6): ``root/train/<class>/*.png`` and
      ``root/test/<class>/*.png`` (``valid/`` or ``val/`` also accepted for the evaluation split).
      Labels are positions in the sorted class *directories* of the splits present (Q25 fixed);
      files are sorted by name within a class.

    Args:
        root: Dataset directory.
        batch_size: Training batch size.
        val_batch_size: Validation/test batch size (the reference simulates with 512).
        num_workers: DataLoader workers; None means ``min(8, os.cpu_count())``.
        layout: ``"auto"``, ``"torchvision"`` or ``"reference"``.
        augment: Apply the reference's training augmentation (§9.5) to the training split.
        image_size: Network input size (the reference's ``input_size``).
        resize_size: The reference's ``origin_size`` used by the training augmentation; None
            means ``image_size`` (CIFAR CNNs: 32/32; ViT-B/32 on CIFAR: 256/224).
        check_md5: Let torchvision verify the md5 sums of the pickles the split reads.
        num_classes: Classes the data must have (None: 10); ``setup`` checks it.
        name: Preset name, for messages (None: ``cifar10``).
        seed: Seeds the training shuffle.
    """

    _title = "CIFAR-10"
    _default_name = "cifar10"
    _expected = (
        "torchvision's cifar-10-batches-py/ or the reference layout "
        "train/<class>/*.png + test/<class>/*.png"
    )
    _mean, _std = CIFAR10_MEAN, CIFAR10_STD
    _dataset_cls = CIFARSplit10
    _torchvision_dir = "cifar-10-batches-py"
    _standard_classes = CIFAR10_CLASSES
    _train_dirs = ("train",)
    _eval_dirs = ("test", "valid", "val")

    def _has_reference_layout(self, path: Path) -> bool:
        return _first_dir(path, (*self._train_dirs, *self._eval_dirs)) is not None

    def _load_reference_split(self, train: bool) -> Dataset:
        return self._load_folders(train, self._train_dirs, self._eval_dirs)


class CIFAR100DataModule(_CIFARDataModule):
    """CIFAR-100 from torchvision's pickles or the reference's images + CSV labels.

    Layouts (``layout="auto"`` picks whichever is present, torchvision's first):

    * ``"torchvision"``: ``root/cifar-100-python/{train,test,meta}`` (fine labels).
    * ``"reference"`` (acim-model.md §9.6): ``root/train_images/*.jpg`` and
      ``root/test_images/*.jpg`` labelled by ``root/train.csv`` and ``root/test.csv``
      (:class:`~lightning_modules.datasets.CIFAR100CSV`).

    Args: as :class:`CIFAR10DataModule` (``num_classes`` None: 100, ``name``: ``cifar100``).
    """

    _title = "CIFAR-100"
    _default_name = "cifar100"
    _expected = (
        "torchvision's cifar-100-python/ or the reference layout train_images/*.jpg + "
        "test_images/*.jpg with train.csv/test.csv (columns image_id, fine_labels)"
    )
    _mean, _std = CIFAR100_MEAN, CIFAR100_STD
    _dataset_cls = CIFARSplit100
    _torchvision_dir = "cifar-100-python"
    _standard_classes = CIFAR100_CLASSES

    def _has_reference_layout(self, path: Path) -> bool:
        return _first_dir(path, ("train_images", "test_images")) is not None

    def _load_reference_split(self, train: bool) -> Dataset:
        try:
            dataset = CIFAR100CSV(self.root, train=train, transform=self._transform(train))
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{err}; {_ROOT_HINT}") from None
        _check_labels(dataset.targets, self.num_classes, dataset.csv_path)
        return dataset


class ImageNetDataModule(_ImageDataModule):
    """ImageNet (ILSVRC-2012) in class folders, as the reference reads it (acim-model.md §9.6).

    ``root/train/<wnid>/*.JPEG`` and ``root/valid/<wnid>/*.JPEG`` (``val/`` also accepted).
    Labels are positions in the sorted class *directories* of the splits present (Q25 fixed;
    the standard 1000 wnids give the usual indices). Until ``setup`` the class names are
    placeholders ``"0"``..``"999"``.

    Args:
        root: Dataset directory.
        batch_size: Training batch size.
        val_batch_size: Validation/test batch size.
        num_workers: DataLoader workers; None means ``min(8, os.cpu_count())``.
        image_size: Network input size.
        resize_size: The reference's ``origin_size`` (training resize before the random crop),
            and the shorter-side resize before the center crop when ``center_crop``.
        center_crop: False (reference, Q23): evaluate on a direct ``image_size`` square resize.
            True: resize to ``resize_size`` then center-crop ``image_size``.
        augment: Apply the reference's training augmentation (§9.5, Q24) to the training split.
        num_classes: Class folders the data must have; ``setup`` checks it.
        name: Preset name, for messages.
        seed: Seeds the training shuffle.
    """

    _title = "ImageNet"
    _expected = "train/<wnid>/*.JPEG + valid/<wnid>/*.JPEG (or val/)"
    _mean, _std = IMAGENET_MEAN, IMAGENET_STD
    _train_dirs = ("train",)
    _eval_dirs = ("valid", "val")

    def __init__(
        self,
        root: str | os.PathLike,
        batch_size: int = 128,
        val_batch_size: int = 128,
        num_workers: int | None = None,
        image_size: int = 224,
        resize_size: int = 256,
        center_crop: bool = False,
        augment: bool = True,
        num_classes: int = 1000,
        name: str = "imagenet",
        seed: int = 0,
    ) -> None:
        super().__init__(
            root,
            name=name,
            num_classes=num_classes,
            batch_size=batch_size,
            val_batch_size=val_batch_size,
            num_workers=num_workers,
            image_size=image_size,
            resize_size=resize_size,
            augment=augment,
            seed=seed,
        )
        self.center_crop = center_crop

    def _layout_at(self, path: Path) -> str | None:
        return "folders" if _first_dir(path, (*self._train_dirs, *self._eval_dirs)) else None

    def _transform(self, train: bool) -> T.Compose:
        if train and self.augment:
            return build_train_transform(self.image_size, self.resize_size, self._mean, self._std)
        return build_eval_transform(
            self.image_size,
            self._mean,
            self._std,
            center_crop=self.center_crop,
            resize_size=self.resize_size,
        )

    def _load_split(self, train: bool) -> Dataset:
        self._layout()
        return self._load_folders(train, self._train_dirs, self._eval_dirs)


class TextDataModule(ClassificationDataModule):
    """Language modelling on a folder of text files: blocks of tokens with next-token targets.

    The files matching ``pattern`` under ``root`` (default: this Python's standard library,
    present on every machine, so the demo needs no download) are split *by file* into training
    and validation (:func:`~lightning_modules.datasets.split_by_file`: by the hash of each
    relative path, so the split depends on names only), each split concatenated into one token
    stream and cut into blocks of ``block_size`` tokens
    (:class:`~lightning_modules.datasets.TokenBlocks`). Tokens are raw bytes (vocabulary 256)
    unless ``tokenizer`` names a Hugging Face tokenizer (a local folder or a cached name,
    loaded with ``transformers.AutoTokenizer``, never downloaded).

    ``num_classes`` is the vocabulary size (next-token prediction classifies over it).

    Args:
        root: Text folder; None: the standard library (``sysconfig``'s ``stdlib`` path).
        pattern: Glob of the files under ``root`` (``"*.py"``: the top-level modules).
        exclude: Path parts whose files are skipped (``site-packages``, test folders).
        block_size: Tokens per block (the model's context).
        val_fraction: Fraction of the files held out for validation, in (0, 1).
        max_val_blocks: Validation blocks kept, evenly spaced over the held-out stream (a
            small fixed evaluation set); None keeps them all.
        tokenizer: None (bytes) or a Hugging Face tokenizer name or folder.
        batch_size: Training batch size (blocks).
        val_batch_size: Validation/test batch size (blocks).
        num_workers: DataLoader worker processes.
        name: Preset name, for messages.
        seed: Seeds the training shuffle.
    """

    task = "language_modeling"
    in_channels = 1
    image_size = 0

    def __init__(
        self,
        root: str | None = None,
        pattern: str = "*.py",
        exclude: Sequence[str] = ("site-packages", "dist-packages", "test", "tests", "idlelib"),
        block_size: int = 128,
        val_fraction: float = 0.1,
        max_val_blocks: int | None = None,
        tokenizer: str | None = None,
        batch_size: int = 32,
        val_batch_size: int = 32,
        num_workers: int = 0,
        name: str = "text",
        seed: int = 0,
    ) -> None:
        super().__init__(name, batch_size, val_batch_size, num_workers, seed)
        if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
            raise ValueError(f"dataset.block_size must be a positive int, got {block_size!r}")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"dataset.val_fraction must lie in (0, 1), got {val_fraction}")
        if max_val_blocks is not None and max_val_blocks < 1:
            raise ValueError(f"dataset.max_val_blocks must be >= 1 or null, got {max_val_blocks}")
        if root is None:
            import sysconfig

            root = sysconfig.get_paths()["stdlib"]
        self.root = Path(root).expanduser()
        self.pattern = pattern
        self.exclude = tuple(exclude)
        self.block_size = block_size
        self.val_fraction = val_fraction
        self.max_val_blocks = max_val_blocks
        self.tokenizer_name = tokenizer
        self._tokenizer = None
        self.train_files: list[Path] = []
        self.val_files: list[Path] = []
        if tokenizer is None:
            self.num_classes = 256
        else:
            self.num_classes = len(self.tokenizer())
        self.class_names = []  # no per-class results: the classes are the vocabulary

    def tokenizer(self):
        """The Hugging Face tokenizer (loaded once, offline), or None for bytes."""
        if self.tokenizer_name is None:
            return None
        if self._tokenizer is None:
            try:
                from transformers import AutoTokenizer
            except ImportError:
                raise ValueError(
                    f"dataset.tokenizer={self.tokenizer_name} needs transformers: pip install "
                    "transformers, or set dataset.tokenizer=null for byte-level tokens"
                ) from None
            try:
                self._tokenizer = AutoTokenizer.from_pretrained(
                    self.tokenizer_name, local_files_only=True
                )
            except OSError:
                raise FileNotFoundError(
                    f"dataset.tokenizer={self.tokenizer_name}: no such tokenizer folder or "
                    "cached name (nothing is downloaded); pass a local folder"
                ) from None
        return self._tokenizer

    def _encode(self, files: Sequence[Path]) -> torch.Tensor:
        tok = self.tokenizer()
        return encode_files(files, None if tok is None else tok.encode)

    def _find_files(self) -> None:
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"text folder not found: {self.root}; set dataset.root=DIR (a folder of text "
                f"files matching dataset.pattern={self.pattern})"
            )
        files = text_files(self.root, self.pattern, self.exclude)
        self.train_files, self.val_files = split_by_file(files, self.root, self.val_fraction)
        for what, split in (("training", self.train_files), ("validation", self.val_files)):
            if not split:
                raise FileNotFoundError(
                    f"no {what} files: {len(files)} file(s) match dataset.pattern="
                    f"{self.pattern} under {self.root} (excluding {', '.join(self.exclude)}); "
                    "the split is by file, so it needs several files (or change "
                    "dataset.val_fraction)"
                )

    def setup(self, stage: str | None = None) -> None:
        """Finds and splits the files, encodes the split(s) needed."""
        if not self.val_files:
            self._find_files()
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = TokenBlocks(self._encode(self.train_files), self.block_size)
        if self.val_set is None:
            self.val_set = TokenBlocks(
                self._encode(self.val_files), self.block_size, self.max_val_blocks
            )
            if len(self.val_set) == 0:
                raise ValueError(
                    f"the validation files under {self.root} hold fewer than "
                    f"dataset.block_size+1={self.block_size + 1} tokens"
                )


# ------------------------------------------------------------------------------ instantiation


DATAMODULES: dict[str, type[ClassificationDataModule]] = {
    "digits": DigitsDataModule,
    "cifar10": CIFAR10DataModule,
    "cifar100": CIFAR100DataModule,
    "imagenet": ImageNetDataModule,
    "text": TextDataModule,
}
"""Schema name -> DataModule class; :func:`lightning_modules.config.register_configs` stores
:func:`datamodule_schema` of each as ``dataset_schema_<name>``, the base of the presets."""


def _schema_type(tp: Any) -> Any:
    """The OmegaConf field type of a constructor annotation (paths as ``str``, sequences as
    lists, anything else untyped)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        kinds = [a for a in args if a is not type(None)]
        inner = str if str in kinds else (kinds[0] if len(kinds) == 1 else Any)
        inner = _schema_type(inner)
        return typing.Optional[inner] if len(kinds) < len(args) else inner  # noqa: UP045
    if origin in (list, tuple, Sequence, collections.abc.Sequence):
        return list[_schema_type(args[0])] if args else list[Any]
    return tp if tp in (int, float, bool, str) else Any


def datamodule_schema(cls: type) -> type:
    """A dataclass schema of ``cls``'s constructor: one field per argument (but ``seed``, which
    the run passes), with the constructor's type and default, plus ``_target_``. The defaults
    stay the constructor's (one source of truth); presets state only what differs, and a wrong
    type (``dataset.val_batch_size=abc``) fails when Hydra composes."""
    hints = typing.get_type_hints(cls.__init__)
    fields: list[tuple[str, Any, Any]] = [
        ("_target_", str, dataclasses.field(default=f"{cls.__module__}.{cls.__qualname__}"))
    ]
    for name, param in inspect.signature(cls).parameters.items():
        if name == "seed" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        default = param.default
        if default is param.empty:
            spec = dataclasses.field(default="???")  # OmegaConf's MISSING: the preset sets it
        elif isinstance(default, (list, tuple)):
            spec = dataclasses.field(default_factory=lambda d=default: list(d))
        else:
            spec = dataclasses.field(default=default)
        fields.append((name, _schema_type(hints.get(name, Any)), spec))
    return dataclasses.make_dataclass(f"{cls.__name__}Config", fields)


def instantiate_datamodule(
    dataset_cfg: DictConfig | dict[str, Any], *, seed: int, **overrides: Any
) -> ClassificationDataModule:
    """The DataModule of a ``dataset`` preset (its ``_target_`` class, its other keys as
    arguments), with ``seed`` and ``overrides`` (e.g. an absolute ``root=``) applied.

    Resolves nothing about paths: the caller passes ``root`` as it should be read. A key the
    DataModule does not take is a one-line ValueError naming the valid ones; the DataModule's
    own one-line errors pass through unchanged (not wrapped by Hydra).
    """
    if isinstance(dataset_cfg, DictConfig):
        node = OmegaConf.to_container(dataset_cfg, resolve=True)
    else:
        node = dict(dataset_cfg)
    node.update(overrides)
    node["seed"] = seed
    label = node.get("name", "?")
    target = node.get("_target_")
    if not isinstance(target, str):
        raise ValueError(
            f"dataset={label} has no _target_: name its DataModule class, e.g. "
            "_target_: lightning_modules.data.CIFAR10DataModule (see conf/dataset/)"
        )
    try:
        cls = get_class(target)
    except Exception:
        raise ValueError(f"dataset={label}: _target_ {target} is not an importable class") from None
    params = inspect.signature(cls).parameters
    unknown = sorted(k for k in node if k != "_target_" and k not in params)
    if unknown:
        valid = ", ".join(p for p in params if p != "seed")
        raise ValueError(
            f"dataset={label}: {cls.__name__} takes no {', '.join(unknown)}; valid keys: {valid}"
        )
    missing = [p.name for p in params.values() if p.default is p.empty and p.name not in node]
    if missing:
        raise ValueError(
            f"dataset={label}: {cls.__name__} needs {', '.join(missing)} "
            f"(set dataset.{missing[0]}=...)"
        )
    try:
        return instantiate(node, _convert_="all")
    except InstantiationException as err:  # Hydra wraps the constructor's one-line errors
        if isinstance(err.__cause__, (ValueError, FileNotFoundError, TypeError)):
            raise err.__cause__ from None
        raise


def build_datamodule(name: str, **kwargs: Any) -> ClassificationDataModule:
    """Deprecated: the DataModule of preset ``name`` with ``kwargs`` (a ``dataset`` node
    without ``name``). Kept until ``lightning_modules/builders.py`` calls
    :func:`instantiate_datamodule`; ``kwargs`` must hold ``_target_``."""
    seed = kwargs.pop("seed", 0)
    return instantiate_datamodule({"name": name, **kwargs}, seed=seed)
