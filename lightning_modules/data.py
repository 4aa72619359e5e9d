"""LightningDataModules: digits (offline default), CIFAR-10/100 and ImageNet.

Transforms and normalisation constants follow acim-model.md §9.5; on-disk layouts follow §9.6,
with quirk Q25 fixed (labels index class *directories* only; CIFAR-100 files are sorted by name,
so its batches cannot match the reference's unknowable ``listdir`` order) and Q23 reproduced
(ImageNet evaluation resizes straight to 224x224 unless ``center_crop=True``).

Every DataModule exposes ``num_classes``, ``in_channels``, ``image_size`` and ``class_names`` right
after ``__init__``, without failing when the data is not there yet: the builder sizes the model's
head before ``setup``, and a missing dataset is reported by ``setup`` in one line.

Evaluation loaders never shuffle. Under ``torch.distributed`` (world size > 1; the Trainer runs with
``use_distributed_sampler=False``) they shard with :class:`UnpaddedDistributedSampler`, so every
sample is counted exactly once, and the training loader uses a seeded ``DistributedSampler``.
"""

from __future__ import annotations

import csv
import math
import os
import pickle
from collections.abc import Callable, Sequence, Sized
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, TensorDataset
from torchvision import transforms as T
from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.datasets.utils import check_integrity

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "DigitsDataModule",
    "ImageNetDataModule",
    "UnpaddedDistributedSampler",
    "build_datamodule",
    "build_eval_transform",
    "build_train_transform",
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

# The reference globs *.png (CIFAR-10), *.jpg (CIFAR-100) and case-sensitive *.JPEG (ImageNet);
# accepting all three case-insensitively selects the same files on the official layouts.
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_ROOT_HINT = "set dataset.root=DIR"


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


# ---------------------------------------------------------------------- distributed evaluation


class UnpaddedDistributedSampler(Sampler[int]):
    """Shards a dataset across ranks in order, each index exactly once (no padding, no shuffle).

    ``DistributedSampler`` pads the last shard with repeated samples, so distributed validation
    counts some images twice. Here rank ``r`` gets a contiguous range; the ranges are disjoint and
    cover the dataset exactly, and their sizes may differ.

    Indices are dealt out in whole blocks of ``block_size`` consecutive indices (the last block
    may be short), and the blocks are split contiguously, so block counts per rank differ by at
    most one. With ``block_size=1`` shard sizes differ by at most one. With ``block_size`` equal
    to the evaluation batch size every rank sees exactly the batches a single process would, which
    matters because activation scales are per batch (acim-model.md quirk Q5).

    Args:
        dataset: The dataset (anything with ``len``) or its length.
        num_replicas: World size; defaults to ``torch.distributed.get_world_size()``.
        rank: This process's rank; defaults to ``torch.distributed.get_rank()``.
        block_size: Number of consecutive indices that always stay on one rank.
    """

    def __init__(
        self,
        dataset: Sized | int,
        num_replicas: int | None = None,
        rank: int | None = None,
        block_size: int = 1,
    ) -> None:
        if num_replicas is None or rank is None:
            if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
                raise ValueError(
                    "UnpaddedDistributedSampler needs num_replicas and rank when "
                    "torch.distributed is not initialised"
                )
            num_replicas = (
                torch.distributed.get_world_size() if num_replicas is None else num_replicas
            )
            rank = torch.distributed.get_rank() if rank is None else rank
        if num_replicas < 1:
            raise ValueError(f"num_replicas must be >= 1, got {num_replicas}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.num_samples_total = dataset if isinstance(dataset, int) else len(dataset)
        self.num_replicas = num_replicas
        self.rank = rank
        self.block_size = block_size
        n_blocks = math.ceil(self.num_samples_total / block_size)
        first_block = rank * n_blocks // num_replicas
        last_block = (rank + 1) * n_blocks // num_replicas
        self.start = min(first_block * block_size, self.num_samples_total)
        self.end = min(last_block * block_size, self.num_samples_total)

    def __iter__(self):
        return iter(range(self.start, self.end))

    def __len__(self) -> int:
        return self.end - self.start

    def set_epoch(self, epoch: int) -> None:
        """No-op (the order never changes); present for Lightning's per-epoch hook."""


def _distributed_rank_world() -> tuple[int, int] | None:
    """(rank, world size) when running under an initialised process group of size > 1."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world = torch.distributed.get_world_size()
        if world > 1:
            return torch.distributed.get_rank(), world
    return None


# ------------------------------------------------------------------------------ shared helpers


class _ImageListDataset(Dataset):
    """(path, label) samples, opened with PIL and converted to RGB (acim-model.md §9.6)."""

    def __init__(self, samples: list[tuple[Path, int]], transform: Callable | None) -> None:
        self.samples = samples
        self.targets = [label for _, label in samples]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        with Image.open(path) as img:
            img = img.convert("RGB")
        return (self.transform(img) if self.transform is not None else img), label


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _class_dirs(path: Path) -> list[str]:
    """Sorted sub-directory names; files and hidden entries take no index (fixes Q25)."""
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def _image_files(path: Path) -> list[Path]:
    """Image files directly in ``path``, sorted by file name (fixes Q25's listdir order)."""
    files = (
        Path(e.path)
        for e in os.scandir(path)
        if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(_IMAGE_EXTENSIONS)
    )
    return sorted(files, key=lambda p: p.name)


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
            classes.update(_class_dirs(split_dir))
    return sorted(classes)


def _folder_samples(split_dir: Path, classes: list[str], expected: str) -> list[tuple[Path, int]]:
    """Samples of ``split_dir/<class>/*``, sorted by class then file name."""
    present = _class_dirs(split_dir)
    if not present:
        raise FileNotFoundError(f"no class folders in {split_dir}: expected {expected}")
    index = {name: i for i, name in enumerate(classes)}
    samples = [(p, index[c]) for c in present for p in _image_files(split_dir / c)]
    if not samples:
        raise FileNotFoundError(
            f"no images in the class folders of {split_dir}: expected {expected}"
        )
    return samples


def _read_label_csv(path: Path) -> dict[str, int]:
    """``image_id -> fine_labels`` from a CIFAR-100 reference CSV (keys are base names)."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = [name.strip() for name in (reader.fieldnames or [])]
        missing = [c for c in ("image_id", "fine_labels") if c not in fields]
        if missing:
            raise ValueError(
                f"{path} lacks column(s) {', '.join(missing)}: expected a CSV with header columns "
                "image_id and fine_labels (CIFAR-100 reference layout)"
            )
        reader.fieldnames = fields
        table = {}
        for line, row in enumerate(reader, start=2):
            image_id, label = (row["image_id"] or "").strip(), (row["fine_labels"] or "").strip()
            try:
                table[os.path.basename(image_id)] = int(label)
            except ValueError:
                raise ValueError(
                    f"{path}:{line}: fine_labels {label!r} is not an integer class index"
                ) from None
    return table


def _check_labels(labels: Sequence[int], num_classes: int, where: Path) -> None:
    bad = [y for y in labels if not 0 <= y < num_classes]
    if bad:
        raise ValueError(
            f"labels in {where} must lie in [0, {num_classes}), found {min(bad)}..{max(bad)}"
        )


def _read_meta_names(path: Path, key: str) -> list[str] | None:
    """Class names from a torchvision CIFAR meta pickle, or None when unreadable."""
    try:
        with open(path, "rb") as f:
            names = pickle.load(f, encoding="latin1")[key]
    except Exception:  # only a peek: setup() reports a broken file properly
        return None
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


class _VerifiedCIFARFiles:
    """torchvision CIFAR whose file checks the DataModule has already made.

    torchvision verifies the md5 of *both* splits' files on construction, so a copy holding only
    ``test_batch`` (enough to simulate) or a small synthetic copy is rejected with a generic
    ``RuntimeError``. The DataModule checks the files the requested split reads (presence, and
    torchvision's md5 sums unless ``check_md5=False``) with one-line errors, then builds this.
    """

    def _check_integrity(self) -> bool:
        return True

    def _load_meta(self) -> None:
        path = os.path.join(self.root, self.base_folder, self.meta["filename"])
        with open(path, "rb") as f:
            names = pickle.load(f, encoding="latin1")[self.meta["key"]]
        self.classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}


class _CIFAR10Files(_VerifiedCIFARFiles, CIFAR10):
    pass


class _CIFAR100Files(_VerifiedCIFARFiles, CIFAR100):
    pass


# ------------------------------------------------------------------------------- DataModules


class _ClassificationDataModule(L.LightningDataModule):
    """Loaders shared by every DataModule; subclasses implement ``_load_split``."""

    num_classes: int
    in_channels: int
    image_size: int
    class_names: list[str]

    def __init__(
        self, batch_size: int, val_batch_size: int, num_workers: int | None, seed: int
    ) -> None:
        super().__init__()
        for name, value in (("batch_size", batch_size), ("val_batch_size", val_batch_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if num_workers is None:
            num_workers = min(8, os.cpu_count() or 1)
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
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
        dist = _distributed_rank_world()
        if dist is not None:
            rank, world = dist
            sampler = DistributedSampler(
                self.train_set, num_replicas=world, rank=rank, shuffle=True, seed=self.seed
            )
            return self._loader(self.train_set, self.batch_size, sampler=sampler)
        generator = torch.Generator().manual_seed(self.seed)
        return self._loader(self.train_set, self.batch_size, shuffle=True, generator=generator)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in file order; each sample counted once across ranks."""
        if self.val_set is None:
            self.setup("validate")
        dist = _distributed_rank_world()
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


class DigitsDataModule(_ClassificationDataModule):
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes): the offline default.

    Images are ``float32 [1, 8, 8]``: pixel/16, then normalised with the training split's scalar
    mean and (population) std, stored in ``mean``/``std`` after ``setup``. The split is stratified
    and depends only on ``seed``.

    Args:
        batch_size: Training batch size.
        val_batch_size: Validation/test batch size.
        num_workers: DataLoader worker processes (0: load in the main process).
        val_fraction: Fraction of the images held out for validation, in (0, 1).
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
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, val_batch_size, num_workers, seed)
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
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


class _ImageDataModule(_ClassificationDataModule):
    """RGB image datasets on disk: root, transforms and class-name bookkeeping."""

    in_channels = 3
    _name: str
    _expected: str  # the layouts, for error messages
    _mean: tuple[float, float, float]
    _std: tuple[float, float, float]

    def __init__(
        self,
        root: str | os.PathLike,
        batch_size: int,
        val_batch_size: int,
        num_workers: int | None,
        image_size: int,
        resize_size: int | None,
        augment: bool,
        seed: int,
    ) -> None:
        super().__init__(batch_size, val_batch_size, num_workers, seed)
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        self.root = Path(root).expanduser()
        self.image_size = image_size
        self.resize_size = image_size if resize_size is None else resize_size
        self.augment = augment
        self._classes_from_data = False

    def _set_classes(self, found: list[str] | None, default: Sequence[str]) -> None:
        """Class names from the data when readable now, else the dataset's standard ones."""
        self._classes_from_data = found is not None
        self.class_names = list(default if found is None else found)
        self.num_classes = len(self.class_names)

    def _adopt_classes(self, found: list[str], where: Path) -> None:
        """Checks the classes seen by ``setup`` against those the model head was sized for."""
        if found == self.class_names:
            return
        if not self._classes_from_data and len(found) == self.num_classes:
            self.class_names, self._classes_from_data = list(found), True
            return
        raise ValueError(
            f"{self._name} at {where} has {len(found)} classes but this DataModule was built for "
            f"{self.num_classes} ({', '.join(self.class_names[:3])}, ...); rebuild it"
        )

    def _not_found(self, path: Path) -> FileNotFoundError:
        return FileNotFoundError(
            f"{self._name} data not found at {path}: expected {self._expected}; {_ROOT_HINT}"
        )

    def _transform(self, train: bool) -> T.Compose:
        if train and self.augment:
            return build_train_transform(self.image_size, self.resize_size, self._mean, self._std)
        return build_eval_transform(self.image_size, self._mean, self._std)


class _CIFARDataModule(_ImageDataModule):
    """Shared CIFAR logic: torchvision's pickles or the reference layout (see subclasses)."""

    _torchvision_cls: type[CIFAR10]
    _torchvision_dir: str
    _default_classes: Sequence[str]
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
        seed: int = 0,
    ) -> None:
        super().__init__(
            root, batch_size, val_batch_size, num_workers, image_size, resize_size, augment, seed
        )
        if layout not in self._layouts:
            raise ValueError(f"layout must be one of {', '.join(self._layouts)}, got {layout!r}")
        self.layout = layout
        self.check_md5 = check_md5
        self._set_classes(self._peek_classes(), self._default_classes)

    # layout detection ---------------------------------------------------------------------
    def _torchvision_root(self) -> Path | None:
        """The directory holding ``cifar-*-python/`` (also accepts that folder itself)."""
        if (self.root / self._torchvision_dir).is_dir():
            return self.root
        if self.root.name == self._torchvision_dir and self.root.is_dir():
            return self.root.parent
        return None

    def _has_reference_layout(self) -> bool:
        raise NotImplementedError

    def _resolve_layout(self) -> str:
        if not self.root.is_dir():
            raise self._not_found(self.root)
        if self.layout == "torchvision":
            if self._torchvision_root() is None:
                raise self._not_found(self.root / self._torchvision_dir)
            return "torchvision"
        if self.layout == "reference":
            return "reference"
        if self._torchvision_root() is not None:
            return "torchvision"
        if self._has_reference_layout():
            return "reference"
        raise ValueError(
            f"unrecognised {self._name} layout at {self.root}: expected {self._expected}; "
            f"{_ROOT_HINT}"
        )

    def _peek_classes(self) -> list[str] | None:
        try:
            layout = self._resolve_layout()
        except (FileNotFoundError, ValueError):
            return None
        if layout == "torchvision":
            folder = self._torchvision_root() / self._torchvision_dir
            meta = self._torchvision_cls.meta
            return _read_meta_names(folder / meta["filename"], meta["key"])
        return self._peek_reference_classes()

    def _peek_reference_classes(self) -> list[str] | None:
        return None

    # loading ------------------------------------------------------------------------------
    def _load_split(self, train: bool) -> Dataset:
        if self._resolve_layout() == "torchvision":
            return self._load_torchvision_split(train)
        return self._load_reference_split(train)

    def _load_reference_split(self, train: bool) -> Dataset:
        raise NotImplementedError

    def _load_torchvision_split(self, train: bool) -> Dataset:
        tv_root = self._torchvision_root()
        folder = tv_root / self._torchvision_dir
        cls = self._torchvision_cls
        files = [
            *(cls.train_list if train else cls.test_list),
            [cls.meta["filename"], cls.meta["md5"]],
        ]
        for filename, md5 in files:
            path = folder / filename
            if not path.is_file():
                raise FileNotFoundError(
                    f"{self._name} file missing: {path}; expected torchvision's "
                    f"{self._torchvision_dir}/ with {', '.join(f for f, _ in cls.train_list)}, "
                    f"{cls.test_list[0][0]} and {cls.meta['filename']}; {_ROOT_HINT}"
                )
            if self.check_md5 and not check_integrity(path, md5):
                raise ValueError(
                    f"{self._name} file {path} fails torchvision's md5 check (corrupt or not the "
                    "official release): re-extract it, or pass check_md5=False for a custom copy"
                )
        dataset_cls = _CIFAR10Files if cls is CIFAR10 else _CIFAR100Files
        try:
            dataset = dataset_cls(
                str(tv_root), train=train, transform=self._transform(train), download=False
            )
        except (OSError, EOFError, pickle.UnpicklingError, KeyError, ValueError) as err:
            raise ValueError(
                f"cannot read {self._name} pickles in {folder}: {type(err).__name__}: "
                f"{_one_line(err)}; expected torchvision's {self._torchvision_dir}/ format"
            ) from None
        self._adopt_classes(dataset.classes, folder)
        _check_labels(dataset.targets, self.num_classes, folder)
        return dataset


class CIFAR10DataModule(_CIFARDataModule):
    """CIFAR-10 from torchvision's pickles or the reference's class folders.

    Layouts (``layout="auto"`` picks whichever is present, torchvision's first):

    * ``"torchvision"``: ``root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``.
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
        check_md5: Verify torchvision's md5 sums of the pickles the split reads.
        seed: Seeds the training shuffle.
    """

    _name = "CIFAR-10"
    _expected = (
        "torchvision's cifar-10-batches-py/ or the reference layout "
        "train/<class>/*.png + test/<class>/*.png"
    )
    _mean, _std = CIFAR10_MEAN, CIFAR10_STD
    _torchvision_cls = CIFAR10
    _torchvision_dir = "cifar-10-batches-py"
    _default_classes = CIFAR10_CLASSES
    _train_dirs = ("train",)
    _eval_dirs = ("test", "valid", "val")

    def _has_reference_layout(self) -> bool:
        return _first_dir(self.root, (*self._train_dirs, *self._eval_dirs)) is not None

    def _peek_reference_classes(self) -> list[str] | None:
        return _union_class_dirs(self.root, (self._train_dirs, self._eval_dirs)) or None

    def _load_reference_split(self, train: bool) -> Dataset:
        names = self._train_dirs if train else self._eval_dirs
        split_dir = _first_dir(self.root, names)
        if split_dir is None:
            raise FileNotFoundError(
                f"{self._name} {'training' if train else 'evaluation'} split not found under "
                f"{self.root}: expected {' or '.join(n + '/' for n in names)} "
                f"(reference layout train/<class>/*.png + test/<class>/*.png); {_ROOT_HINT}"
            )
        classes = _union_class_dirs(self.root, (self._train_dirs, self._eval_dirs))
        expected = f"{split_dir}/<class>/*.png"
        samples = _folder_samples(split_dir, classes, expected)
        self._adopt_classes(classes, self.root)
        return _ImageListDataset(samples, self._transform(train))


class CIFAR100DataModule(_CIFARDataModule):
    """CIFAR-100 from torchvision's pickles or the reference's images + CSV labels.

    Layouts (``layout="auto"`` picks whichever is present, torchvision's first):

    * ``"torchvision"``: ``root/cifar-100-python/{train,test,meta}`` (fine labels).
    * ``"reference"`` (acim-model.md §9.6): ``root/train_images/*.jpg`` and
      ``root/test_images/*.jpg`` labelled by ``root/train.csv`` and ``root/test.csv`` (columns
      ``image_id`` and ``fine_labels``; ``image_id`` is the file name, with or without its
      extension). Both CSVs are read, the split's own winning on a clash; images without a label
      are skipped, as in the reference. Files are sorted by name (Q25 fixed), so batches cannot
      match the reference's filesystem-dependent ``listdir`` order.

    Args: as :class:`CIFAR10DataModule`.
    """

    _name = "CIFAR-100"
    _expected = (
        "torchvision's cifar-100-python/ or the reference layout train_images/*.jpg + "
        "test_images/*.jpg with train.csv/test.csv (columns image_id, fine_labels)"
    )
    _mean, _std = CIFAR100_MEAN, CIFAR100_STD
    _torchvision_cls = CIFAR100
    _torchvision_dir = "cifar-100-python"
    _default_classes = CIFAR100_CLASSES

    def _has_reference_layout(self) -> bool:
        return _first_dir(self.root, ("train_images", "test_images")) is not None

    def _load_reference_split(self, train: bool) -> Dataset:
        split, other = ("train", "test") if train else ("test", "train")
        image_dir, csv_path = self.root / f"{split}_images", self.root / f"{split}.csv"
        for path in (image_dir, csv_path):
            if not path.exists():
                raise FileNotFoundError(
                    f"{self._name} {split} split not found: missing {path}; expected the "
                    f"reference layout {split}_images/*.jpg + {split}.csv "
                    f"(columns image_id, fine_labels); {_ROOT_HINT}"
                )
        table: dict[str, int] = {}
        if (self.root / f"{other}.csv").is_file():
            table.update(_read_label_csv(self.root / f"{other}.csv"))
        table.update(_read_label_csv(csv_path))
        samples = []
        for path in _image_files(image_dir):
            label = table.get(path.name, table.get(path.stem))
            if label is not None:  # the reference skips images missing from the CSVs
                samples.append((path, label))
        if not samples:
            raise FileNotFoundError(
                f"no labelled images in {image_dir}: expected *.jpg files whose names (or stems) "
                f"appear in the image_id column of {csv_path}"
            )
        dataset = _ImageListDataset(samples, self._transform(train))
        _check_labels(dataset.targets, self.num_classes, csv_path)
        return dataset


class ImageNetDataModule(_ImageDataModule):
    """ImageNet (ILSVRC-2012) in class folders, as the reference reads it (acim-model.md §9.6).

    ``root/train/<wnid>/*.JPEG`` and ``root/valid/<wnid>/*.JPEG`` (``val/`` also accepted).
    Labels are positions in the sorted class *directories* of the splits present (Q25 fixed;
    the standard 1000 wnids give the usual indices). Before the data is readable ``num_classes``
    is 1000 with placeholder names.

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
        seed: Seeds the training shuffle.
    """

    _name = "ImageNet"
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
        seed: int = 0,
    ) -> None:
        super().__init__(
            root, batch_size, val_batch_size, num_workers, image_size, resize_size, augment, seed
        )
        self.center_crop = center_crop
        found = None
        if self.root.is_dir():
            found = _union_class_dirs(self.root, (self._train_dirs, self._eval_dirs)) or None
        self._set_classes(found, [str(i) for i in range(1000)])

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
        if not self.root.is_dir():
            raise self._not_found(self.root)
        names = self._train_dirs if train else self._eval_dirs
        split_dir = _first_dir(self.root, names)
        if split_dir is None:
            raise FileNotFoundError(
                f"ImageNet {'training' if train else 'validation'} split not found under "
                f"{self.root}: expected {' or '.join(n + '/' for n in names)} "
                f"(layout {self._expected}); {_ROOT_HINT}"
            )
        classes = _union_class_dirs(self.root, (self._train_dirs, self._eval_dirs))
        samples = _folder_samples(split_dir, classes, f"{split_dir}/<wnid>/*.JPEG")
        self._adopt_classes(classes, self.root)
        return _ImageListDataset(samples, self._transform(train))


# --------------------------------------------------------------------------------- registry

_DATAMODULES: dict[str, type[_ClassificationDataModule]] = {
    "digits": DigitsDataModule,
    "cifar10": CIFAR10DataModule,
    "cifar100": CIFAR100DataModule,
    "imagenet": ImageNetDataModule,
}


def build_datamodule(name: str, **kwargs: Any) -> L.LightningDataModule:
    """Builds a DataModule by registry name.

    Args:
        name: One of ``digits``, ``cifar10``, ``cifar100``, ``imagenet``.
        **kwargs: Constructor arguments of that DataModule.
    """
    try:
        cls = _DATAMODULES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown dataset {name!r}; valid names: {', '.join(sorted(_DATAMODULES))}"
        ) from None
    return cls(**kwargs)


def instantiate_datamodule(
    dataset_cfg: Any, *, seed: int, **overrides: Any
) -> L.LightningDataModule:
    """The DataModule of a ``dataset`` config group node, with ``seed`` and ``overrides`` applied.

    Resolves nothing about paths: the caller passes an absolute ``root=``. A keyword the
    DataModule does not take is a one-line ValueError naming the valid ones.
    """
    from omegaconf import OmegaConf

    kwargs = (
        OmegaConf.to_container(dataset_cfg, resolve=True)
        if not isinstance(dataset_cfg, dict)
        else dict(dataset_cfg)
    )
    kwargs.update(overrides)
    kwargs.pop("_target_", None)
    name = kwargs.pop("name")
    try:
        return build_datamodule(name, seed=seed, **kwargs)
    except TypeError as e:
        raise ValueError(f"dataset={name}: {e}") from None
