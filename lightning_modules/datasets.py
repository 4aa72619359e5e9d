"""Datasets in the on-disk layouts of acim-model.md §9.6, on top of torchvision.

* :class:`ClassFolders`: ``<split>/<class>/<image>`` (the reference's CIFAR-10 and ImageNet
  layouts), a torchvision ``ImageFolder`` whose class list may be given (so every split indexes
  the same classes) and which skips hidden entries (quirk Q25 fixed: only class *directories*
  take an index).
* :class:`CIFARSplit10` / :class:`CIFARSplit100`: torchvision's ``CIFAR10``/``CIFAR100`` reading
  only the files of the requested split, md5-checked by torchvision unless ``check_md5=False``.
* :class:`CIFAR100CSV`: the reference's CIFAR-100 layout, ``<split>_images/*.jpg`` labelled by
  ``<split>.csv``.
* :class:`TokenBlocks`: a token stream cut into blocks with next-token targets (language
  modelling); :func:`text_files`, :func:`split_by_file` and :func:`encode_files` read a folder of
  text files into such streams, byte-level or with a Hugging Face tokenizer.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets import CIFAR10, CIFAR100, ImageFolder
from torchvision.datasets.folder import default_loader

__all__ = [
    "IMAGE_EXTENSIONS",
    "CIFAR100CSV",
    "CIFARSplit10",
    "CIFARSplit100",
    "ClassFolders",
    "TokenBlocks",
    "class_dirs",
    "encode_files",
    "split_by_file",
    "text_files",
    "is_image_file",
    "read_label_csv",
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
