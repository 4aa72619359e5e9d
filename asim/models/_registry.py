"""Model registry (timm style): ``@register_model``, ``create_model(name)``, ``list_models()``."""

from __future__ import annotations

import difflib
import fnmatch
import functools
from collections.abc import Callable

from torch import nn

__all__ = ["create_model", "is_model", "list_models", "model_entrypoint", "register_model"]

_model_entrypoints: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a builder under its function name.

    The returned builder tags the model with ``model.model_name`` (used by error messages,
    e.g. in :func:`asim.checkpoint.load_checkpoint`) unless the builder already set it.
    """
    name = fn.__name__
    if name in _model_entrypoints:
        raise ValueError(f"model {name!r} is registered twice; rename one of the builders")

    @functools.wraps(fn)
    def builder(*args, **kwargs) -> nn.Module:
        model = fn(*args, **kwargs)
        if not getattr(model, "model_name", None):
            model.model_name = name
        return model

    _model_entrypoints[name] = builder
    return builder


def list_models(filter: str = "") -> list[str]:
    """Sorted names of the registered models, optionally filtered by a glob (``"resnet*"``)."""
    names = sorted(_model_entrypoints)
    return [n for n in names if fnmatch.fnmatchcase(n, filter)] if filter else names


def is_model(name: str) -> bool:
    """Whether ``name`` is a registered model."""
    return name in _model_entrypoints


def model_entrypoint(name: str) -> Callable[..., nn.Module]:
    """The builder function registered as ``name`` (its signature lists the model's kwargs)."""
    if name not in _model_entrypoints:
        close = difflib.get_close_matches(name, list(_model_entrypoints), n=4, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "see asim.models.list_models()"
        raise ValueError(f"unknown model {name!r}; {hint}")
    return _model_entrypoints[name]


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered float model by name; ``kwargs`` go to its builder.

    Raises:
        ValueError: unknown name (the message lists close matches).
    """
    return model_entrypoint(name)(**kwargs)
