"""One LightningDataModule for every dataset; the datasets are Hydra ``_target_``s.

A preset (``conf/dataset/NAME.yaml``) is a :class:`DataModule` whose ``train`` and ``val`` nodes
each name a dataset builder by ``_target_`` (:mod:`lightning_modules.datasets`: digits, CIFAR
from torchvision's pickles or the reference layouts, ImageNet-style class folders, the text
corpus), with the transform as a nested ``_target_`` (:func:`image_transform`, acim-model.md
§9.5). The preset's top-level keys are the DataModule's (batch sizes, workers, ``num_classes``,
...) and the datasets' shared parameters (``root``, ``augment``, ``layout``, ``block_size``,
...), which the ``train``/``val`` nodes read by interpolation (``root: ${..root}``), so
``dataset.root=DIR`` sets both splits. Adding a dataset is a YAML file.

Each preset is a delta on a typed schema (:func:`dataset_schema`): the DataModule's constructor
plus the parameters of its dataset builders (:data:`SCHEMAS`), their types and defaults, so a
misspelt key or a wrong type (``dataset.val_batch_size=abc``) fails when Hydra composes.

``num_classes``, ``in_channels``, ``image_size`` and ``block_size`` are known right after
``__init__``; ``setup`` builds the splits, which fail in one line when the data is missing,
misplaced (``did you mean dataset.root=...?``), corrupt or has another class count than
``num_classes``, and takes the class names found on disk. Call ``setup`` before sizing a model.

Evaluation loaders never shuffle. Under ``torch.distributed`` (world size > 1; the Trainer runs
with ``use_distributed_sampler=False``) they shard with
:class:`~lightning_modules.sampler.UnpaddedDistributedSampler` in blocks of the evaluation batch
size, so every sample is counted exactly once and every rank sees single-process batches; the
training loader uses a seeded ``DistributedSampler``. Single-process training shuffles with a
seeded generator that :class:`~lightning_modules.resume.ResumeState` reseeds ``seed + epoch``
every epoch (exact resume).
"""

from __future__ import annotations

import collections.abc
import copy
import dataclasses
import enum
import functools
import inspect
import os
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationKeyError, MissingMandatoryValue, OmegaConfBaseException
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision import transforms as T

from . import datasets
from .sampler import UnpaddedDistributedSampler, first_sample_index, rank_and_world

__all__ = [
    "SCHEMAS",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "DigitsDataModule",
    "ImageNetDataModule",
    "TextDataModule",
    "TASKS",
    "DataModule",
    "UnpaddedDistributedSampler",
    "build_eval_transform",
    "build_train_transform",
    "dataset_schema",
    "first_sample_index",
    "from_preset",
    "image_transform",
    "instantiate_datamodule",
]

TASKS = ("classification", "language_modeling")
"""What a DataModule's batches are for: (image, label) or (tokens, next tokens); the runner picks
its LightningModule by it."""

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


def image_transform(
    train: bool,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    augment: bool = True,
    resize_size: int | None = None,
    center_crop: bool = False,
) -> T.Compose:
    """The transform of an image split (the presets' ``transform`` ``_target_``).

    Args:
        train: The training split: the reference's augmentation when ``augment``.
        image_size: Network input size.
        mean: Per-channel normalisation mean.
        std: Per-channel normalisation std.
        augment: Augment the training split (§9.5, Q24); False evaluates it like validation.
        resize_size: The reference's ``origin_size`` (training resize before the random crop)
            and the shorter-side resize before ``center_crop``; None means ``image_size``.
        center_crop: False (reference, Q23): evaluate on a direct ``image_size`` square resize.
            True: resize to ``resize_size`` then center-crop ``image_size``.
    """
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1:
        raise ValueError(f"dataset.image_size must be a positive int, got {image_size!r}")
    resize_size = image_size if resize_size is None else resize_size
    if train and augment:
        return build_train_transform(image_size, resize_size, mean, std)
    return build_eval_transform(
        image_size, mean, std, center_crop=center_crop, resize_size=resize_size
    )


# ------------------------------------------------------------------------------- DataModule


def _positive_int(key: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"dataset.{key} must be a positive int, got {value!r}")


def _preview(names: Sequence[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


def _unwrap(err: BaseException) -> BaseException | None:
    """The user-facing error (ValueError, FileNotFoundError, TypeError) that Hydra's
    instantiate or an OmegaConf resolver wrapped, or None."""
    seen = err
    while seen is not None:
        if isinstance(seen, (ValueError, FileNotFoundError, TypeError)) and not isinstance(
            seen, OmegaConfBaseException
        ):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class DataModule(L.LightningDataModule):
    """Loaders over a training and a validation dataset, each built from a Hydra node.

    Args:
        val: The validation (and test) split: a ``{_target_: ..., ...}`` node that builds a
            ``Dataset`` (see :mod:`lightning_modules.datasets`), or a ``Dataset``.
        train: The training split, likewise; None: evaluation only.
        num_classes: Classes the model's head is sized for (a language model: the
            vocabulary); ``setup`` checks the data against it.
        name: The preset's name (``dataset=NAME``), used in messages.
        task: ``classification`` or ``language_modeling`` (:data:`TASKS`).
        class_names: Class names in label order until ``setup`` reads the data's; None means
            ``"0"``, ``"1"``, ... (names of another count are replaced by those too).
        in_channels: Image channels (model sizing).
        image_size: Network input size (model sizing; 0: not an image dataset).
        block_size: Tokens per block, the language model's context; None: not a token dataset.
        batch_size: Training batch size.
        val_batch_size: Validation/test batch size (activation scales are per batch, spec Q5).
        num_workers: DataLoader worker processes (0: the main process); None means
            ``min(8, os.cpu_count())``.
        seed: Seeds the training shuffle (and, by interpolation, a seeded split).

    Attributes:
        train_set, val_set: The built splits (None until ``setup`` builds them).
    """

    def __init__(
        self,
        val: Any,
        train: Any = None,
        *,
        num_classes: int,
        name: str = "dataset",
        task: str = "classification",
        class_names: list[str] | None = None,
        in_channels: int = 3,
        image_size: int = 0,
        block_size: int | None = None,
        batch_size: int = 64,
        val_batch_size: int = 256,
        num_workers: int | None = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for key, value in (("batch_size", batch_size), ("val_batch_size", val_batch_size)):
            _positive_int(key, value)
        _positive_int("num_classes", num_classes)
        if block_size is not None:
            _positive_int("block_size", block_size)
        if task not in TASKS:
            raise ValueError(f"dataset.task must be one of {', '.join(TASKS)}, got {task!r}")
        if num_workers is None:
            num_workers = min(8, os.cpu_count() or 1)
        if num_workers < 0:
            raise ValueError(f"dataset.num_workers must be >= 0, got {num_workers}")
        for key, node in (("val", val), ("train", train)):
            if node is not None and not isinstance(node, (Dataset, Mapping)):
                raise ValueError(f"dataset.{key} must be a _target_ node or a Dataset")
        self.name, self.task, self.seed = name, task, seed
        self.num_classes, self.in_channels = num_classes, in_channels
        self.image_size, self.block_size = image_size, block_size
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.num_workers = num_workers
        if task == "language_modeling":
            self.class_names: list[str] = []  # no per-class results: classes are the vocabulary
        elif class_names is not None and len(class_names) == num_classes:
            self.class_names = list(class_names)
        else:
            self.class_names = [str(i) for i in range(num_classes)]
        self._nodes = {"train": train, "val": val}
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def _build(self, split: str) -> Dataset:
        node = self._nodes[split]
        if node is None:
            raise ValueError(
                f"dataset={self.name} has no training split: set dataset.train to a dataset node"
            )
        if isinstance(node, Dataset):
            dataset = node
        else:
            try:
                dataset = instantiate(node, _convert_="all")
            except InstantiationException as err:  # the builders' one-line errors, unwrapped
                cause = _unwrap(err.__cause__ or err)
                if cause is None:
                    raise
                if isinstance(cause, TypeError):
                    raise ValueError(f"dataset.{split}: {cause}") from None
                raise cause from None
        self._check(dataset)
        return dataset

    def _check(self, dataset: Dataset) -> None:
        """The data's classes against ``num_classes`` (taking their names) and its labels."""
        if self.task != "classification":
            return
        origin = getattr(dataset, "origin", f"dataset={self.name}")
        classes = getattr(dataset, "classes", None)
        if classes is not None:
            found = [str(c) for c in classes]
            if len(found) != self.num_classes:
                raise ValueError(
                    f"{origin} has {len(found)} {getattr(dataset, 'classes_kind', 'classes')} "
                    f"({_preview(found)}) but dataset={self.name} expects {self.num_classes}: "
                    "point dataset.root at the whole dataset, or set "
                    f"dataset.num_classes={len(found)} to use these classes"
                )
            self.class_names = found
        targets = getattr(dataset, "targets", None)
        if targets is not None and len(targets) > 0:
            labels = torch.as_tensor(targets)
            bad = labels[(labels < 0) | (labels >= self.num_classes)]
            if len(bad):
                raise ValueError(
                    f"labels in {origin} must lie in [0, {self.num_classes}), found "
                    f"{int(bad.min())}..{int(bad.max())}"
                )

    def setup(self, stage: str | None = None) -> None:
        """Builds the training split for ``fit`` (or ``None``) and the validation split always."""
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self._build("train")
        if self.val_set is None:
            self.val_set = self._build("val")

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
        """Validation batches in order; each sample counted once across ranks.

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


# ---------------------------------------------------------------------------------- schemas


SCHEMAS: dict[str, tuple[Callable, ...]] = {
    "": (),
    "digits": (datasets.digits,),
    "cifar10": (datasets.cifar10, image_transform),
    "cifar100": (datasets.cifar100, image_transform),
    "imagenet": (datasets.imagenet, image_transform),
    "folders": (datasets.image_folders, image_transform),
    "text": (datasets.text_blocks,),
}
"""Schema name -> the dataset builders whose parameters a preset shares between its splits.
:func:`lightning_modules.config.register_configs` stores :func:`dataset_schema` of each as
``dataset_schema_<name>`` (``""``: ``dataset_schema``, the DataModule's keys alone)."""

_SPLIT_ARGS = ("train", "transform", "seed")  # set per split, or the DataModule's
_RUN_SEED = "${oc.select:seed,0}"  # a preset's seed follows the run's


def _schema_type(tp: Any) -> Any:
    """The OmegaConf field type of an annotation (paths as ``str``, sequences as lists, enums
    as themselves, anything else untyped)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        kinds = [a for a in args if a is not type(None)]
        inner = str if str in kinds else (kinds[0] if len(kinds) == 1 else Any)
        inner = _schema_type(inner)
        return typing.Optional[inner] if len(kinds) < len(args) else inner  # noqa: UP045
    if origin in (list, tuple, Sequence, collections.abc.Sequence):
        return list[_schema_type(args[0])] if args else list[Any]
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp
    return tp if tp in (int, float, bool, str) else Any


def _fields(fn: Callable, skip: Sequence[str]) -> list[tuple[str, Any, Any]]:
    hints = typing.get_type_hints(fn.__init__ if isinstance(fn, type) else fn)
    out = []
    for name, param in inspect.signature(fn).parameters.items():
        if name in skip or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        default = param.default
        if default is param.empty:
            spec = dataclasses.field(default="???")  # OmegaConf's MISSING: the preset sets it
        elif isinstance(default, (list, tuple)):
            spec = dataclasses.field(default_factory=lambda d=default: list(d))
        else:
            spec = dataclasses.field(default=default)
        out.append((name, _schema_type(hints.get(name, Any)), spec))
    return out


def dataset_schema(name: str = "") -> type:
    """The typed schema of the presets built on ``SCHEMAS[name]``: the DataModule's
    constructor (``train``/``val`` as mappings, ``seed`` following the run's) plus the
    builders' parameters but ``train``, ``transform`` and ``seed``, each with its type and
    default (a builder's default wins over the DataModule's for a name both take). The
    defaults stay the constructors' (one source of truth); presets state only what differs.
    """
    fields: dict[str, tuple[str, Any, Any]] = {
        "_target_": ("_target_", str, dataclasses.field(default=f"{__name__}.DataModule"))
    }
    for f in _fields(DataModule, ()):
        fields[f[0]] = f
    node = typing.Optional[dict[str, Any]]  # noqa: UP045 (OmegaConf needs Optional)
    fields["train"] = ("train", node, dataclasses.field(default=None))
    fields["val"] = ("val", node, dataclasses.field(default=None))
    fields["seed"] = ("seed", int, dataclasses.field(default=_RUN_SEED))
    for fn in SCHEMAS[name]:
        for f in _fields(fn, _SPLIT_ARGS):
            if f[0] not in fields or f[2].default not in ("???", dataclasses.MISSING):
                fields[f[0]] = f
    label = "".join(part.title() for part in name.split("_")) or "DataModule"
    return dataclasses.make_dataclass(f"{label}DatasetConfig", list(fields.values()))


# ------------------------------------------------------------------------------ instantiation


def _params() -> Mapping[str, inspect.Parameter]:
    return inspect.signature(DataModule).parameters


def _check_read(node: DictConfig, resolved: dict, params: Mapping, label: str) -> None:
    """A shared key that no interpolation reads (``root: ${..root}``) does nothing: unless it
    keeps its schema default, a one-line ValueError naming it."""
    text = OmegaConf.to_yaml(OmegaConf.to_container(node, resolve=False))
    read = set(re.findall(r"\$\{\.+(\w+)\}", text))
    schema = OmegaConf.get_type(node)
    defaults = schema() if dataclasses.is_dataclass(schema) else None
    for key, value in resolved.items():
        if key in params or key in read or key == "_target_":
            continue
        if defaults is not None and getattr(defaults, key, "???") == value:
            continue
        raise ValueError(
            f"dataset={label}: dataset.{key}={value!r} is read by neither dataset.train nor "
            f"dataset.val (no ${{..{key}}} in them): wire it there, or leave it unset"
        )


def instantiate_datamodule(
    dataset_cfg: DictConfig | Mapping[str, Any], *, seed: int | None = None, **overrides: Any
) -> DataModule:
    """The DataModule of a ``dataset`` node: its DataModule keys as arguments, its other keys
    read by the ``train``/``val`` nodes' interpolations. ``overrides`` (e.g. an absolute
    ``root=``) and ``seed`` are set on a copy first, with the schema's type checks.

    Resolves nothing about paths: the caller passes ``root`` as it should be read. A key the
    node does not have is a one-line ValueError naming the valid ones; a missing value (e.g.
    ``root``) one naming the key to set; the builders' own one-line errors pass through
    unchanged (not wrapped by Hydra or OmegaConf).
    """
    if isinstance(dataset_cfg, DictConfig):
        node = copy.deepcopy(dataset_cfg)  # keeps its parent: ${oc.select:seed} resolves
    else:
        node = OmegaConf.create(dict(dataset_cfg))
    label = node.get("name", "?")
    if node.get("_target_") is None:
        raise ValueError(
            f"dataset={label} has no _target_: start the preset with the defaults entry "
            "/dataset_schema_<kind>@_here_ (see conf/dataset/), or set "
            f"_target_: {__name__}.DataModule"
        )
    if seed is not None:
        overrides["seed"] = seed
    valid = set(node.keys()) | set(_params())
    unknown = sorted(k for k in overrides if k not in valid)
    if unknown:
        raise ValueError(
            f"dataset={label} takes no {', '.join(unknown)}; valid keys: "
            f"{', '.join(k for k in sorted(valid) if k not in ('_target_', 'seed'))}"
        )
    for key, value in overrides.items():
        value = os.fspath(value) if isinstance(value, os.PathLike) else value
        try:
            OmegaConf.update(node, key, list(value) if isinstance(value, tuple) else value)
        except OmegaConfBaseException as err:
            msg = str(err).splitlines()[0]
            raise ValueError(f"dataset.{key}={value!r}: {msg}") from None
    try:
        resolved = OmegaConf.to_container(node, resolve=True, throw_on_missing=True)
    except (MissingMandatoryValue, InterpolationKeyError) as err:
        found = re.search(r"key '\.*([\w.]+)' not found", str(err))
        key = found.group(1) if found else str(err.full_key or err.key)
        key = key.rsplit(".", 1)[-1]
        raise ValueError(f"dataset={label} needs {key} (set dataset.{key}=...)") from None
    except OmegaConfBaseException as err:
        cause = _unwrap(err)
        if cause is None:
            raise
        raise cause from None
    params = _params()
    _check_read(node, resolved, params, label)
    kwargs = {k: v for k, v in resolved.items() if k in params or k == "_target_"}
    required = [p.name for p in params.values() if p.default is p.empty]
    missing = [name for name in required if kwargs.get(name) is None]
    if missing:
        raise ValueError(f"dataset={label} needs {missing[0]} (set dataset.{missing[0]}=...)")
    try:
        return instantiate(kwargs, _recursive_=False, _convert_="all")
    except InstantiationException as err:  # the constructor's one-line errors, unwrapped
        cause = _unwrap(err.__cause__ or err)
        if cause is None:
            raise
        raise cause from None


def from_preset(
    name: str, root: str | os.PathLike | None = None, *, seed: int = 0, **overrides: Any
) -> DataModule:
    """The DataModule of ``conf/dataset/NAME.yaml`` with ``overrides`` (keys of the preset,
    e.g. ``batch_size=``), for Python callers and tests:
    ``from_preset("cifar10", "data/cifar10", augment=False)``."""
    from .config import compose

    if root is not None:
        overrides["root"] = root
    node = compose("simulate", [f"dataset={name}"]).dataset
    return instantiate_datamodule(node, seed=seed, **overrides)


# The presets under the names of the classes they replace (one DataModule since issue 19).
DigitsDataModule = functools.partial(from_preset, "digits")
CIFAR10DataModule = functools.partial(from_preset, "cifar10")
CIFAR100DataModule = functools.partial(from_preset, "cifar100")
ImageNetDataModule = functools.partial(from_preset, "imagenet")
TextDataModule = functools.partial(from_preset, "pycode")
