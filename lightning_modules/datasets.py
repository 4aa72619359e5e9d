"""The datasets a :class:`~lightning_modules.data.DataModule` takes as Hydra ``_target_``s.

Each function below builds one split (``train=True``/``False``) of one dataset, in the on-disk
layouts of acim-model.md §9.6, on top of torchvision; nothing is downloaded. A preset
(``conf/dataset/*.yaml``) names them in its ``train`` and ``val`` nodes. Each image dataset has
one *layout detector* (:func:`cifar10_layout`, :func:`cifar100_layout`, :func:`imagenet_layout`)
that :func:`locate` also tries one folder above and below ``root``, for the one-line ``did you
mean dataset.root=...?`` hint.

* :func:`digits`: scikit-learn's bundled 8x8 digits, a stratified split by seed.
* :func:`cifar10` / :func:`cifar100`: torchvision's pickles (:class:`CIFARSplit10`,
  :class:`CIFARSplit100`: only the requested split's files, md5-checked by torchvision unless
  ``check_md5=False``) or the reference's layouts (:class:`ClassFolders`, :class:`CIFAR100CSV`).
* :func:`image_folders` / :func:`imagenet`: ``<split>/<class>/<image>`` (:class:`ClassFolders`,
  a torchvision ``ImageFolder`` whose class list is given so every split indexes the same
  classes, skipping hidden entries: quirk Q25 fixed).
* :func:`text_blocks`: a folder of text files split by file, one token stream per split cut
  into :class:`TokenBlocks` with next-token targets (bytes, or a Hugging Face tokenizer).

Datasets of classification carry ``classes`` (names found on disk, when the layout has them),
``targets``, and ``origin``/``classes_kind`` for messages; the DataModule checks them against
its ``num_classes``.
"""

from __future__ import annotations

import csv
import enum
import functools
import hashlib
import os
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset
from torchvision.datasets import CIFAR10, CIFAR100, ImageFolder
from torchvision.datasets.folder import default_loader

__all__ = [
    "IMAGE_EXTENSIONS",
    "CIFAR100CSV",
    "CIFARLayout",
    "CIFARSplit10",
    "CIFARSplit100",
    "ClassFolders",
    "Digits",
    "TokenBlocks",
    "cifar10",
    "cifar100",
    "cifar10_layout",
    "cifar100_layout",
    "class_dirs",
    "digits",
    "encode_files",
    "image_folders",
    "imagenet",
    "imagenet_layout",
    "is_image_file",
    "load_tokenizer",
    "locate",
    "read_label_csv",
    "split_by_file",
    "text_blocks",
    "text_files",
    "vocab_size",
]

# The reference globs *.png (CIFAR-10), *.jpg (CIFAR-100) and case-sensitive *.JPEG (ImageNet);
# accepting all three case-insensitively selects the same files on the official layouts.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def is_image_file(path: str | os.PathLike) -> bool:
    """A non-hidden file named ``*.png``, ``*.jpg`` or ``*.jpeg`` (any case)."""
    name = os.path.basename(path)
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def class_dirs(path: str | os.PathLike) -> list[str]:
    """Sorted non-hidden sub-directory names of ``path`` (files take no index: Q25 fixed)."""
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


class ClassFolders(ImageFolder):
    """``root/<class>/<image>`` read with PIL as RGB, sorted by class then file name.

    Only images directly in a class folder count (hidden files and sub-folders are skipped).

    Args:
        root: The split folder (e.g. ``.../train``).
        classes: Class names, in label order; None means this folder's sorted class directories.
            A class without a folder here is simply absent from this split.
        transform: Applied to each PIL image.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        classes: Sequence[str] | None = None,
        transform: Callable | None = None,
    ) -> None:
        self._given_classes = None if classes is None else list(classes)
        top = os.path.normpath(os.path.expanduser(root))

        def in_class_folder(path: str) -> bool:  # the reference globs <class>/*, not deeper
            return is_image_file(path) and os.path.dirname(os.path.dirname(path)) == top

        super().__init__(root, transform=transform, is_valid_file=in_class_folder, allow_empty=True)

    def find_classes(self, directory: str | os.PathLike) -> tuple[list[str], dict[str, int]]:
        """The given classes, else the sorted non-hidden sub-directories of ``directory``."""
        classes = self._given_classes if self._given_classes is not None else class_dirs(directory)
        if not classes:
            raise FileNotFoundError(f"no class folders in {directory}")
        return classes, {name: i for i, name in enumerate(classes)}


def _split_files(files: list[list[Any]], keep: bool, check_md5: bool) -> list[list[Any]]:
    """torchvision's ``[filename, md5]`` list, emptied for the other split, md5s dropped if
    unchecked (torchvision's ``check_integrity(path, None)`` tests only that the file exists)."""
    return [[name, md5 if check_md5 else None] for name, md5 in files] if keep else []


class _CIFARSplit:
    """Mixin: torchvision's CIFAR dataset limited to one split's files.

    torchvision checks the md5 sums of *both* splits on construction, so a copy holding only
    ``test_batch`` (enough to simulate) would be refused. The file lists and the meta entry are
    torchvision's public class attributes; an instance copy restricted to this split (and
    without md5 sums when ``check_md5=False``) makes torchvision check exactly these files.
    Integrity failures stay torchvision's ``RuntimeError``.
    """

    train_list: list[list[Any]]
    test_list: list[list[Any]]
    meta: dict[str, str]

    def __init__(
        self,
        root: str | os.PathLike,
        train: bool,
        transform: Callable | None = None,
        check_md5: bool = True,
    ) -> None:
        self.train_list = _split_files(type(self).train_list, train, check_md5)
        self.test_list = _split_files(type(self).test_list, not train, check_md5)
        self.meta = {**type(self).meta, "md5": type(self).meta["md5"] if check_md5 else None}
        super().__init__(root, train=train, transform=transform, download=False)

    @classmethod
    def split_files(cls, train: bool) -> list[str]:
        """File names a split reads, meta file included."""
        return [name for name, _ in (cls.train_list if train else cls.test_list)] + [
            cls.meta["filename"]
        ]


class CIFARSplit10(_CIFARSplit, CIFAR10):
    """CIFAR-10's ``cifar-10-batches-py/`` pickles of one split (see :class:`_CIFARSplit`)."""


class CIFARSplit100(_CIFARSplit, CIFAR100):
    """CIFAR-100's ``cifar-100-python/`` pickles of one split, fine labels."""


def read_label_csv(path: Path) -> dict[str, int]:
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


class CIFAR100CSV(Dataset):
    """The reference's CIFAR-100 layout: ``root/<split>_images/*.jpg`` + ``root/<split>.csv``.

    The CSVs have columns ``image_id`` (the file name, with or without its extension) and
    ``fine_labels``. Both splits' CSVs are read, the split's own winning on a clash; images
    without a label are skipped, as in the reference. Files are sorted by name (Q25 fixed), so
    batches cannot match the reference's filesystem-dependent ``listdir`` order.

    Args:
        root: Dataset folder.
        train: The ``train`` split, else ``test``.
        transform: Applied to each PIL image.
    """

    def __init__(self, root: str | os.PathLike, train: bool, transform: Callable | None = None):
        root = Path(root)
        split, other = ("train", "test") if train else ("test", "train")
        self.image_dir, self.csv_path = root / f"{split}_images", root / f"{split}.csv"
        for path in (self.image_dir, self.csv_path):
            if not path.exists():
                raise FileNotFoundError(
                    f"CIFAR-100 {split} split not found: missing {path}; expected the reference "
                    f"layout {split}_images/*.jpg + {split}.csv (columns image_id, fine_labels)"
                )
        table: dict[str, int] = {}
        if (root / f"{other}.csv").is_file():
            table.update(read_label_csv(root / f"{other}.csv"))
        table.update(read_label_csv(self.csv_path))
        files = sorted(
            (e.path for e in os.scandir(self.image_dir) if e.is_file() and is_image_file(e.name)),
            key=os.path.basename,
        )
        self.samples = []
        for path in files:
            name = os.path.basename(path)
            label = table.get(name, table.get(os.path.splitext(name)[0]))
            if label is not None:
                self.samples.append((path, label))
        if not self.samples:
            raise FileNotFoundError(
                f"no labelled images in {self.image_dir}: expected *.jpg files whose names (or "
                f"stems) appear in the image_id column of {self.csv_path}"
            )
        self.targets = [label for _, label in self.samples]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        img = default_loader(path)
        return (self.transform(img) if self.transform is not None else img), label


# ------------------------------------------------------------------------- language modelling


def text_files(root: str | os.PathLike, pattern: str, exclude: Sequence[str] = ()) -> list[Path]:
    """Files under ``root`` matching the glob ``pattern`` (``"*.py"``, ``"**/*.txt"``), sorted
    by relative path; hidden files and any path with a part in ``exclude`` are skipped."""
    root = Path(root)
    skip = set(exclude)
    files = []
    for path in root.glob(pattern):
        parts = path.relative_to(root).parts
        if path.is_file() and not any(p.startswith(".") or p in skip for p in parts):
            files.append(path)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def split_by_file(
    files: Sequence[Path], root: str | os.PathLike, val_fraction: float
) -> tuple[list[Path], list[Path]]:
    """(training, validation) files: a file is held out when the hash of its relative path
    falls in the first ``val_fraction`` of the range, so the split depends on names only (not
    on the machine, the file order or the other files)."""
    train, val = [], []
    for path in files:
        name = Path(path).relative_to(root).as_posix()
        h = int.from_bytes(hashlib.sha1(name.encode()).digest()[:8], "big") / 2**64
        (val if h < val_fraction else train).append(path)
    return train, val


def encode_files(files: Sequence[Path], tokenizer: Callable[[str], list[int]] | None) -> Tensor:
    """One token stream of ``files`` in order: raw bytes (``tokenizer`` None, vocabulary 256),
    else ``tokenizer(text)`` of each file read as UTF-8 (undecodable bytes replaced)."""
    if tokenizer is None:
        data = b"".join(Path(p).read_bytes() for p in files)
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.long)
    ids: list[int] = []
    for p in files:
        ids.extend(tokenizer(Path(p).read_text(encoding="utf-8", errors="replace")))
    return torch.tensor(ids, dtype=torch.long)


class TokenBlocks(Dataset):
    """A token stream as blocks ``(x, y)`` of ``block_size`` tokens, ``y`` = ``x`` shifted by
    one (next-token targets). Block ``i`` starts at token ``starts[i]``.

    Args:
        tokens: 1-D token ids.
        block_size: Tokens per block.
        max_blocks: Keep this many blocks, evenly spaced over the stream (a small, fixed
            evaluation set); None keeps every non-overlapping block.
    """

    def __init__(self, tokens: Tensor, block_size: int, max_blocks: int | None = None) -> None:
        if tokens.dim() != 1:
            raise ValueError(f"tokens must be 1-D, got shape {tuple(tokens.shape)}")
        self.tokens = tokens
        self.block_size = block_size
        n = (len(tokens) - 1) // block_size  # a target for every input token
        starts = torch.arange(n) * block_size
        if max_blocks is not None and max_blocks < n:
            starts = starts[torch.linspace(0, n - 1, max_blocks).round().long()]
        self.starts = starts

    def __len__(self) -> int:
        return len(self.starts)

    def fingerprint(self) -> str:
        """A hash of the blocks (tokens, starts, block size): equal fingerprints, equal data."""
        h = hashlib.sha1(f"{self.block_size}:".encode())
        h.update(self.tokens.numpy().tobytes())
        h.update(self.starts.numpy().tobytes())
        return h.hexdigest()

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        s = int(self.starts[index])
        chunk = self.tokens[s : s + self.block_size + 1]
        return chunk[:-1], chunk[1:]


# ----------------------------------------------------------------- layouts and "did you mean"

ROOT_HINT = "set dataset.root=DIR"


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _first_dir(root: Path, names: Sequence[str]) -> Path | None:
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None


class CIFARLayout(str, enum.Enum):
    """Where CIFAR data is read from: ``auto`` (whichever is present, torchvision's first),
    ``torchvision`` (its pickles) or ``reference`` (the reference's images, §9.6)."""

    auto = "auto"
    torchvision = "torchvision"
    reference = "reference"


_CIFAR10_SPLIT_DIRS = (("train",), ("test", "valid", "val"))
_IMAGENET_SPLIT_DIRS = (("train",), ("valid", "val"))


def _cifar_layout(path: Path, layout: CIFARLayout, torchvision_dir: str, reference) -> str | None:
    layout = CIFARLayout(layout)
    on_disk = (path / torchvision_dir).is_dir() or path.name == torchvision_dir
    if on_disk and layout in (CIFARLayout.auto, CIFARLayout.torchvision):
        return "torchvision"
    if layout in (CIFARLayout.auto, CIFARLayout.reference) and reference(path):
        return "reference"
    return None


def cifar10_layout(path: Path, layout: CIFARLayout = CIFARLayout.auto) -> str | None:
    """CIFAR-10's layout at ``path``: ``torchvision`` (``cifar-10-batches-py/``, or ``path`` is
    that folder), ``reference`` (``train/`` or ``test/``/``valid/``/``val/``), or None."""
    return _cifar_layout(
        path,
        layout,
        "cifar-10-batches-py",
        lambda p: _first_dir(p, [d for dirs in _CIFAR10_SPLIT_DIRS for d in dirs]) is not None,
    )


def cifar100_layout(path: Path, layout: CIFARLayout = CIFARLayout.auto) -> str | None:
    """CIFAR-100's layout at ``path``: ``torchvision`` (``cifar-100-python/``), ``reference``
    (``train_images/`` or ``test_images/``), or None."""
    return _cifar_layout(
        path,
        layout,
        "cifar-100-python",
        lambda p: _first_dir(p, ("train_images", "test_images")) is not None,
    )


def imagenet_layout(path: Path) -> str | None:
    """``folders`` when ``path`` has ``train/``, ``valid/`` or ``val/``, else None."""
    names = [d for dirs in _IMAGENET_SPLIT_DIRS for d in dirs]
    return "folders" if _first_dir(path, names) is not None else None


def locate(root: Path, detect: Callable[[Path], str | None], title: str, expected: str) -> str:
    """The layout ``detect`` finds at ``root``; else a one-line FileNotFoundError naming the
    path and the expected layout, with ``did you mean dataset.root=...?`` when a folder one
    level below or above ``root`` has the layout."""
    layout = detect(root) if root.is_dir() else None
    if layout is not None:
        return layout
    candidates = [root / sub for sub in class_dirs(root)[:100]] if root.is_dir() else []
    candidates.append(root.parent)
    guess = next(
        (p for p in candidates if p != root and p.is_dir() and detect(p) is not None), None
    )
    hint = f"did you mean dataset.root={guess}?" if guess is not None else ROOT_HINT
    raise FileNotFoundError(f"{title} data not found at {root}: expected {expected}; {hint}")


def _described(dataset: Dataset, origin: str, classes_kind: str = "classes") -> Dataset:
    dataset.origin = origin  # type: ignore[attr-defined]
    dataset.classes_kind = classes_kind  # type: ignore[attr-defined]
    return dataset


# ------------------------------------------------------------------------------ image datasets


def _folders_split(
    root: Path,
    train: bool,
    split_dirs: tuple[Sequence[str], Sequence[str]],
    title: str,
    expected: str,
    transform: Callable | None,
) -> ClassFolders:
    """``<split>/<class>/<image>``, labels indexing the class folders of every split present."""
    names = split_dirs[0] if train else split_dirs[1]
    split_dir = _first_dir(root, names)
    if split_dir is None:
        raise FileNotFoundError(
            f"{title} {'training' if train else 'evaluation'} split not found under {root}: "
            f"expected {' or '.join(n + '/' for n in names)} (layout {expected}); {ROOT_HINT}"
        )
    classes: set[str] = set()
    for dirs in split_dirs:
        found = _first_dir(root, dirs)
        if found is not None:
            classes.update(class_dirs(found))
    layout = f"{split_dir}/<class>/<image>"
    if not classes:
        raise FileNotFoundError(f"no class folders in {split_dir}: expected {layout}")
    dataset = ClassFolders(split_dir, sorted(classes), transform=transform)
    if not dataset.samples:
        raise FileNotFoundError(
            f"no images in the class folders of {split_dir}: expected {layout} "
            f"({', '.join('*' + e for e in IMAGE_EXTENSIONS)})"
        )
    return _described(dataset, f"{title} at {root}", "class folders")


def image_folders(
    root: str | os.PathLike,
    train: bool,
    train_dirs: Sequence[str] = ("train",),
    eval_dirs: Sequence[str] = ("valid", "val", "test"),
    title: str = "image folders",
    transform: Callable | None = None,
) -> ClassFolders:
    """A split of a dataset in class folders, ``root/<split>/<class>/<image>``: the first of
    ``train_dirs`` (or ``eval_dirs``) present is the split. Labels are positions in the sorted
    class *directories* of both splits (Q25 fixed); images sorted by name within a class."""
    root = Path(root).expanduser()
    dirs = (tuple(train_dirs), tuple(eval_dirs))
    expected = " + ".join(f"{'/'.join(d)}/<class>/<image>" for d in dirs)

    def detect(path: Path) -> str | None:
        return "folders" if _first_dir(path, [*dirs[0], *dirs[1]]) else None

    locate(root, detect, title, expected)
    return _folders_split(root, train, dirs, title, expected, transform)


def imagenet(
    root: str | os.PathLike, train: bool, transform: Callable | None = None
) -> ClassFolders:
    """ImageNet (ILSVRC-2012) as the reference reads it (acim-model.md §9.6):
    ``root/train/<wnid>/*.JPEG`` and ``root/valid/<wnid>/*.JPEG`` (``val/`` also accepted)."""
    root = Path(root).expanduser()
    expected = "train/<wnid>/*.JPEG + valid/<wnid>/*.JPEG (or val/)"
    locate(root, imagenet_layout, "ImageNet", expected)
    return _folders_split(root, train, _IMAGENET_SPLIT_DIRS, "ImageNet", expected, transform)


def _torchvision_split(
    root: Path, train: bool, cls: type[_CIFARSplit], title: str, check_md5: bool, transform
) -> Dataset:
    folder_name = cls.base_folder
    base = root if (root / folder_name).is_dir() else root.parent
    folder = base / folder_name
    for filename in cls.split_files(train):
        if not (folder / filename).is_file():
            raise FileNotFoundError(
                f"{title} file missing: {folder / filename}; expected torchvision's "
                f"{folder_name}/ with {', '.join(cls.split_files(True))} and "
                f"{', '.join(cls.split_files(False)[:-1])}; {ROOT_HINT}"
            )
    try:
        dataset = cls(base, train=train, transform=transform, check_md5=check_md5)
    except RuntimeError:  # torchvision's integrity check: the files are present (see above)
        if not check_md5:
            raise
        raise ValueError(
            f"{title} files in {folder} fail torchvision's md5 check (corrupt, or not the "
            "official release): re-extract them, or pass dataset.check_md5=false to read them "
            "unchecked"
        ) from None
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, ValueError) as err:
        raise ValueError(
            f"cannot read {title} pickles in {folder}: {type(err).__name__}: "
            f"{_one_line(err)}; expected torchvision's {folder_name}/ format"
        ) from None
    dataset.classes = [n.decode() if isinstance(n, bytes) else str(n) for n in dataset.classes]
    return _described(dataset, f"{title} at {folder}", f"class names in {cls.meta['filename']}")


def cifar10(
    root: str | os.PathLike,
    train: bool,
    layout: CIFARLayout = CIFARLayout.auto,
    check_md5: bool = True,
    transform: Callable | None = None,
) -> Dataset:
    """A CIFAR-10 split from torchvision's pickles or the reference's class folders.

    * ``torchvision``: ``root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``
      (``root`` may be that folder). Only the split's files are read; torchvision checks their
      md5 sums unless ``check_md5=False``.
    * ``reference`` (§9.6): ``root/train/<class>/*.png`` + ``root/test/<class>/*.png``
      (``valid/`` or ``val/`` also accepted for evaluation), labels by sorted class directory.
    """
    root = Path(root).expanduser()
    expected = (
        "torchvision's cifar-10-batches-py/ or the reference layout "
        "train/<class>/*.png + test/<class>/*.png"
    )
    found = locate(root, lambda p: cifar10_layout(p, layout), "CIFAR-10", expected)
    if found == "torchvision":
        return _torchvision_split(root, train, CIFARSplit10, "CIFAR-10", check_md5, transform)
    return _folders_split(root, train, _CIFAR10_SPLIT_DIRS, "CIFAR-10", expected, transform)


def cifar100(
    root: str | os.PathLike,
    train: bool,
    layout: CIFARLayout = CIFARLayout.auto,
    check_md5: bool = True,
    transform: Callable | None = None,
) -> Dataset:
    """A CIFAR-100 split from torchvision's pickles (``root/cifar-100-python/``, fine labels)
    or the reference's ``<split>_images/*.jpg`` + ``<split>.csv`` (:class:`CIFAR100CSV`)."""
    root = Path(root).expanduser()
    expected = (
        "torchvision's cifar-100-python/ or the reference layout train_images/*.jpg + "
        "test_images/*.jpg with train.csv/test.csv (columns image_id, fine_labels)"
    )
    found = locate(root, lambda p: cifar100_layout(p, layout), "CIFAR-100", expected)
    if found == "torchvision":
        return _torchvision_split(root, train, CIFARSplit100, "CIFAR-100", check_md5, transform)
    try:
        dataset = CIFAR100CSV(root, train=train, transform=transform)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{err}; {ROOT_HINT}") from None
    return _described(dataset, f"CIFAR-100 at {dataset.csv_path}")


# ---------------------------------------------------------------------------------- digits


class Digits(TensorDataset):
    """A split of scikit-learn's 8x8 digits: ``float32 [1, 8, 8]`` images and labels.

    Attributes:
        mean, std: The training split's scalar pixel mean and (population) std, used to
            normalise both splits.
        classes: ``"0"`` .. ``"9"``.
    """

    mean: float
    std: float
    classes = [str(i) for i in range(10)]


def digits(train: bool, val_fraction: float = 0.25, seed: int = 0) -> Digits:
    """A split of scikit-learn's bundled digits (1797 images, 10 classes): pixel/16, normalised
    by the training split's mean and std. The split is stratified and depends only on
    ``seed``; ``val_fraction`` of the images are held out for validation."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"dataset.val_fraction must lie in (0, 1), got {val_fraction}")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = torch.from_numpy(data.images.astype(np.float32) / 16.0).unsqueeze(1)
    labels = torch.from_numpy(data.target.astype(np.int64))  # (N, 1, 8, 8), (N,)
    train_idx, val_idx = train_test_split(
        np.arange(len(labels)), test_size=val_fraction, stratify=data.target, random_state=seed
    )
    train_idx, val_idx = np.sort(train_idx), np.sort(val_idx)
    mean = float(images[train_idx].mean())
    std = float(images[train_idx].std(correction=0))
    idx = train_idx if train else val_idx
    dataset = Digits((images[idx] - mean) / std, labels[idx])
    dataset.mean, dataset.std = mean, std
    return _described(dataset, "digits")


# ------------------------------------------------------------------------------------- text


@functools.lru_cache(maxsize=8)
def load_tokenizer(name: str):
    """The Hugging Face tokenizer ``name`` (a local folder or a cached name), never
    downloaded; a one-line error when transformers or the tokenizer is missing."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise ValueError(
            f"dataset.tokenizer={name} needs transformers: pip install transformers, or set "
            "dataset.tokenizer=null for byte-level tokens"
        ) from None
    try:
        return AutoTokenizer.from_pretrained(name, local_files_only=True)
    except OSError:
        raise FileNotFoundError(
            f"dataset.tokenizer={name}: no such tokenizer folder or cached name (nothing is "
            "downloaded); pass a local folder"
        ) from None


def vocab_size(tokenizer: str | None = None) -> int:
    """Token ids of ``tokenizer`` (None: bytes, 256): the language model's classes. Registered
    as the resolver ``${vocab_size:...}`` (text presets: ``num_classes``)."""
    return 256 if tokenizer is None else len(load_tokenizer(tokenizer))


def text_blocks(
    train: bool,
    root: str | None = None,
    pattern: str = "*.py",
    exclude: Sequence[str] = ("site-packages", "dist-packages", "test", "tests", "idlelib"),
    block_size: int = 128,
    val_fraction: float = 0.1,
    max_val_blocks: int | None = None,
    tokenizer: str | None = None,
) -> TokenBlocks:
    """A split of a folder of text files as blocks of ``block_size`` tokens with next-token
    targets.

    The files matching ``pattern`` under ``root`` (None: this Python's standard library, on
    every machine) are split *by file* (:func:`split_by_file`, by the hash of each relative
    path), the split's files concatenated into one token stream (:func:`encode_files`: bytes,
    or ``tokenizer``, a Hugging Face tokenizer loaded offline). ``max_val_blocks`` keeps that
    many validation blocks evenly spaced over the stream (None: all); training keeps all. The
    result has ``root`` and ``files``.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"dataset.val_fraction must lie in (0, 1), got {val_fraction}")
    if max_val_blocks is not None and max_val_blocks < 1:
        raise ValueError(f"dataset.max_val_blocks must be >= 1 or null, got {max_val_blocks}")
    if root is None:
        import sysconfig

        root = sysconfig.get_paths()["stdlib"]
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"text folder not found: {root}; set dataset.root=DIR (a folder of text files "
            f"matching dataset.pattern={pattern})"
        )
    files = text_files(root, pattern, exclude)
    train_files, val_files = split_by_file(files, root, val_fraction)
    for what, split in (("training", train_files), ("validation", val_files)):
        if not split:
            raise FileNotFoundError(
                f"no {what} files: {len(files)} file(s) match dataset.pattern={pattern} under "
                f"{root} (excluding {', '.join(exclude)}); the split is by file, so it needs "
                "several files (or change dataset.val_fraction)"
            )
    split_files = train_files if train else val_files
    tok = None if tokenizer is None else load_tokenizer(tokenizer)
    tokens = encode_files(split_files, None if tok is None else tok.encode)
    blocks = TokenBlocks(tokens, block_size, None if train else max_val_blocks)
    if len(blocks) == 0:
        raise ValueError(
            f"the {'training' if train else 'validation'} files under {root} hold fewer than "
            f"dataset.block_size+1={block_size + 1} tokens"
        )
    blocks.root, blocks.files = root, split_files
    return blocks
