"""Load float checkpoints from our runs, torchvision, Lightning and the reference (Keio-CSG/ASiM).

:func:`load_checkpoint` unwraps the container, maps the reference's parameter names onto ours
(spec §9.5), checks every key and shape, and loads with one call. Our models use torchvision's
names, so torchvision state_dicts need no renaming. Reference mapping (model-aware: a rename is
applied only where it produces a key of the model and the original name is not one):

=====================================================  =========================================
reference key                                          our key
=====================================================  =========================================
``conv1.weight`` [64,3,3,3] / ``conv2.weight`` [..7,7]  ``conv1.weight``: the stem whose shape fits
                                                       the model; the other stem is ignored
``cls_token``                                          ``class_token``
``patch_embedding.conv_proj.*``                        ``conv_proj.*``
``encoder.layers.L.*``                                 ``encoder.layers.encoder_layer_L.*``
``...self_attention.qkv.{weight,bias}``                ``...self_attention.in_proj_{weight,bias}``
``...self_attention.proj.*``                           ``...self_attention.out_proj.*``
``...mlp.mlp1.*`` / ``...mlp.mlp2.*``                  ``...mlp.0.*`` / ``...mlp.3.*``
``heads.{weight,bias}``                                ``heads.head.{weight,bias}``
(torchvision < 0.13) ``...mlp.linear_1/2.*``           ``...mlp.0.*`` / ``...mlp.3.*``
=====================================================  =========================================

Parameters shared by several modules (the VGG's one PACT alpha, repeated under every position,
quirk Q20) must hold equal values in the checkpoint; one of them is loaded.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .models.layers import PACT

__all__ = [
    "load_checkpoint",
    "read_checkpoint",
]

# (pattern, replacement, naming) applied in order to every key; see the module docstring.
_RENAMES: list[tuple[re.Pattern[str], str, str]] = [
    (re.compile(r"^cls_token$"), "class_token", "reference"),
    (re.compile(r"^patch_embedding\.conv_proj\."), "conv_proj.", "reference"),
    (re.compile(r"^encoder\.layers\.(\d+)\."), r"encoder.layers.encoder_layer_\1.", "reference"),
    (
        re.compile(r"\.self_attention\.qkv\.(weight|bias)$"),
        r".self_attention.in_proj_\1",
        "reference",
    ),
    (re.compile(r"\.self_attention\.proj\."), ".self_attention.out_proj.", "reference"),
    (re.compile(r"\.mlp\.mlp1\."), ".mlp.0.", "reference"),
    (re.compile(r"\.mlp\.mlp2\."), ".mlp.3.", "reference"),
    (re.compile(r"^heads\.(weight|bias)$"), r"heads.head.\1", "reference"),
    (re.compile(r"\.mlp\.linear_1\."), ".mlp.0.", "torchvision"),
    (re.compile(r"\.mlp\.linear_2\."), ".mlp.3.", "torchvision"),
]
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / torch.compile
_N_LISTED = 3  # keys named per category in an error message


def read_checkpoint(
    path: str | os.PathLike, *, weights_only: bool = True, option: str = "ckpt"
) -> Any:
    """``torch.load`` of a checkpoint file on the CPU; a file that is not one fails with a
    one-line ValueError naming the file, what it is and what was expected (``option``: the
    command-line key the path came from, for the message).

    Raises:
        FileNotFoundError: no such file.
        ValueError: truncated or not a PyTorch file, or pickled objects other than tensors
            with ``weights_only``.
    """
    label = os.fspath(path)
    if not os.path.isfile(label):
        raise FileNotFoundError(f"{option}={label}: no such file")
    try:
        return torch.load(label, map_location="cpu", weights_only=weights_only)
    except Exception as e:  # unpickling and zip errors have many types
        text = str(e)
        if weights_only and "weights_only" in text:
            raise ValueError(
                f"{option}={label} holds pickled Python objects, not only tensors (e.g. a "
                "whole model): save model.state_dict() instead (from Python, "
                "load_checkpoint(..., weights_only=False) reads a file you trust)"
            ) from None
        size = os.path.getsize(label)
        reason = text.strip().splitlines()[0].split(". ")[0] if text.strip() else "empty"
        raise ValueError(
            f"{option}={label} ({size} bytes) is not a readable PyTorch checkpoint: truncated "
            f"or another format ({type(e).__name__}: {reason[:100]}); expected a file written "
            "by torch.save (a state_dict, a reference .pkl or a Lightning .ckpt)"
        ) from None


def load_checkpoint(
    model: nn.Module,
    source: str | os.PathLike | Mapping[str, Any],
    *,
    strict_classifier: bool = False,
    weights_only: bool = True,
) -> dict[str, Any]:
    """Load a float checkpoint into ``model`` in place and report what was done.

    Accepted containers: a plain state_dict (ours or torchvision's names); the reference's
    ``.pkl`` (a ``torch.save`` dict with ``model_state_dict``, ``optimizer_state_dict``,
    ``epoch``, ``best_acc``; reference names, spec §9.5); a Lightning checkpoint (``state_dict``
    whose model keys start with ``model.``). ``module.`` / ``_orig_mod.`` prefixes are stripped.

    Allowed gaps: PACT alphas and BatchNorm ``num_batches_tracked`` missing from the checkpoint
    (torchvision files) keep their current values. The classifier is loaded when its shapes
    match; when only the class count differs (or the checkpoint has no head) the model's own,
    freshly initialised head is kept and reported, unless ``strict_classifier``. The reference
    converters instead re-initialise the head even when it fits (Q27).

    Args:
        model: the float model (or an ACiM-converted one with the same parameter names).
        source: a file path or an already loaded checkpoint dict.
        strict_classifier: raise instead of keeping the model's head on a class-count mismatch.
        weights_only: passed to ``torch.load``; set False only for trusted files that pickle
            other objects (e.g. Lightning hyper-parameters).

    Returns:
        A report: ``source``, ``format`` (``"state_dict"``, ``"reference"`` or ``"lightning"``),
        ``naming`` (``"torchvision"``, i.e. ours, or ``"reference"``), ``loaded`` (number of
        keys), ``remapped`` ({checkpoint key: model key}), ``missing`` (model keys left at their
        values), ``ignored`` ({checkpoint key: reason}), ``shared`` (groups of keys loaded from
        one value), ``classifier`` (``"kept"`` or ``"reset"``), ``classifier_classes`` (the
        checkpoint head's output count, None without a head) and ``meta`` (epoch, best_acc,
        global_step when the file has them).

    Raises:
        ValueError: the checkpoint does not fit the model; one line naming the first missing,
            unexpected and mis-shaped keys.
    """
    if isinstance(source, Mapping):
        label, ckpt = "<dict>", source
    else:
        label = os.fspath(source)
        ckpt = read_checkpoint(label, weights_only=weights_only)
    name = getattr(model, "model_name", None) or type(model).__name__
    fmt, state, ignored, meta = _unwrap(ckpt, label)
    model_sd = model.state_dict()

    state, remapped, naming = _rename(state, model_sd)
    naming = _map_resnet_stem(state, model_sd, remapped, ignored) or naming
    if fmt == "reference":  # e.g. a reference VGG, whose names already equal ours
        naming = "reference"
    shared = _merge_shared(model, state, model_sd, label)

    missing = [k for k in model_sd if k not in state]
    unexpected = [k for k in state if k not in model_sd]
    mis_shaped = [
        k for k in model_sd if k in state and tuple(state[k].shape) != tuple(model_sd[k].shape)
    ]

    classifier, head_reason = _classifier_status(model, model_sd, state, missing, mis_shaped)
    head_keys = [k for k in _classifier_keys(model, model_sd) if k in state]
    classifier_classes = int(state[head_keys[0]].shape[0]) if head_keys else None
    problems: list[str] = []
    if classifier == "reset":
        if strict_classifier:
            problems.append(f"classifier {head_reason} (strict_classifier=True)")
        original = {new: old for old, new in remapped.items()}
        for k in _classifier_keys(model, model_sd):
            if k in state:
                ignored[original.get(k, k)] = f"classifier {head_reason}; the model's head is kept"
                remapped.pop(original.get(k, k), None)
                del state[k]
        missing = [k for k in missing if k not in _classifier_keys(model, model_sd)]
        mis_shaped = [k for k in mis_shaped if k not in _classifier_keys(model, model_sd)]

    allowed = [k for k in missing if _may_be_missing(model, k)]
    missing = [k for k in missing if k not in allowed]
    if missing:
        problems.append("missing " + _first(missing))
    if unexpected:
        problems.append("unexpected " + _first(unexpected))
    if mis_shaped:
        shown = ", ".join(
            f"{k} model {_shape(model_sd[k])} vs checkpoint {_shape(state[k])}"
            for k in mis_shaped[:_N_LISTED]
        )
        more = f" (+{len(mis_shaped) - _N_LISTED} more)" if len(mis_shaped) > _N_LISTED else ""
        problems.append(f"shape {shown}{more}")
        if "conv1.weight" in mis_shaped and getattr(model, "stem", None) in ("cifar", "imagenet"):
            want = "imagenet" if state["conv1.weight"].shape[-1] == 7 else "cifar"
            if want != model.stem:
                problems.append(f"hint: the checkpoint's stem fits stem={want!r}")
    if problems:
        raise ValueError(f"checkpoint {label} does not fit {name}: " + "; ".join(problems))

    result = model.load_state_dict({k: state[k] for k in model_sd if k in state}, strict=False)
    if result.unexpected_keys:  # cannot happen after the checks above
        raise RuntimeError(f"unexpected keys after checking: {result.unexpected_keys}")
    return {
        "source": label,
        "format": fmt,
        "naming": naming,
        "loaded": sum(k in state for k in model_sd),
        "remapped": remapped,
        "missing": allowed,
        "ignored": ignored,
        "shared": shared,
        "classifier": classifier,
        "classifier_classes": classifier_classes,
        "meta": meta,
    }


def _unwrap(ckpt: Any, label: str) -> tuple[str, dict[str, Tensor], dict[str, str], dict]:
    """(format, state_dict, ignored keys, meta) of a loaded checkpoint object."""
    if not isinstance(ckpt, Mapping):
        raise ValueError(
            f"checkpoint {label} is a {type(ckpt).__name__}, not a dict; save "
            "model.state_dict() rather than the model"
        )
    ignored: dict[str, str] = {}
    if isinstance(ckpt.get("model_state_dict"), Mapping):  # reference .pkl (spec §9.5)
        fmt, state = "reference", dict(ckpt["model_state_dict"])
        meta = {k: ckpt[k] for k in ("epoch", "best_acc") if k in ckpt}
    elif isinstance(ckpt.get("state_dict"), Mapping):  # Lightning (or a generic wrapper)
        fmt, raw = "lightning", dict(ckpt["state_dict"])
        meta = {k: ckpt[k] for k in ("epoch", "global_step") if k in ckpt}
        if any(k.startswith("model.") for k in raw):
            state = {k[len("model.") :]: v for k, v in raw.items() if k.startswith("model.")}
            ignored.update(
                {
                    k: "outside the LightningModule's model."
                    for k in raw
                    if not k.startswith("model.")
                }
            )
        else:
            state = raw
    else:
        fmt, state, meta = "state_dict", dict(ckpt), {}
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise ValueError(
            f"checkpoint {label} is not a recognised format: entries "
            f"{_first(bad)} are not tensors (expected a state_dict, a reference "
            "'model_state_dict' dict or a Lightning 'state_dict')"
        )
    for prefix in _WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return fmt, state, ignored, meta


def _rename(
    state: dict[str, Tensor], model_sd: Mapping[str, Tensor]
) -> tuple[dict[str, Tensor], dict[str, str], str]:
    """Apply :data:`_RENAMES` where they turn a foreign key into one of the model's keys."""
    out: dict[str, Tensor] = {}
    remapped: dict[str, str] = {}
    naming = "torchvision"
    for key, value in state.items():
        new, tags = key, set()
        for pattern, repl, tag in _RENAMES:
            renamed = pattern.sub(repl, new)
            if renamed != new:
                new = renamed
                tags.add(tag)
        if new != key and key not in model_sd and new in model_sd and new not in state:
            remapped[key] = new
            naming = "reference" if "reference" in tags else naming
            out[new] = value
        else:
            out[key] = value
    return out, remapped, naming


def _map_resnet_stem(
    state: dict[str, Tensor],
    model_sd: Mapping[str, Tensor],
    remapped: dict[str, str],
    ignored: dict[str, str],
) -> str | None:
    """The reference ResNet holds two stems (``conv1`` 3x3, ``conv2`` 7x7): keep the fitting one."""
    if not (
        "conv1.weight" in state
        and "conv2.weight" in state
        and "conv1.weight" in model_sd
        and "conv2.weight" not in model_sd
        and "layer1.0.conv1.weight" in state
    ):
        return None
    want = tuple(model_sd["conv1.weight"].shape)
    if tuple(state["conv2.weight"].shape) == want and tuple(state["conv1.weight"].shape) != want:
        ignored["conv1.weight"] = "reference CIFAR stem, unused by this model's ImageNet stem"
        state["conv1.weight"] = state.pop("conv2.weight")
        remapped["conv2.weight"] = "conv1.weight"
    else:
        ignored["conv2.weight"] = "reference ImageNet stem, unused by this model's stem"
        del state["conv2.weight"]
    return "reference"


def _merge_shared(
    model: nn.Module, state: dict[str, Tensor], model_sd: Mapping[str, Tensor], label: str
) -> list[list[str]]:
    """Check that keys of one shared tensor agree (Q20) and fill absent ones from the others."""
    by_id: dict[int, list[str]] = {}
    named = [
        *model.named_parameters(remove_duplicate=False),
        *model.named_buffers(remove_duplicate=False),
    ]
    for key, tensor in named:
        if key in model_sd:
            by_id.setdefault(id(tensor), []).append(key)
    groups = [keys for keys in by_id.values() if len(keys) > 1]
    for keys in groups:
        present = [k for k in keys if k in state]
        if not present:
            continue
        ref = state[present[0]]
        for k in present[1:]:
            v = state[k]
            if v.shape != ref.shape or not torch.equal(v.to(ref.dtype), ref):
                raise ValueError(
                    f"checkpoint {label}: {k} and {present[0]} hold one shared "
                    "parameter in the model but differ in the checkpoint (Q20)"
                )
        for k in keys:
            state.setdefault(k, ref)
    return groups


def _classifier_keys(model: nn.Module, model_sd: Mapping[str, Tensor]) -> list[str]:
    prefix = getattr(model, "classifier_name", None)
    if prefix is None:  # foreign model: its last Linear
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            return []
        prefix = linears[-1]
    return [k for k in (f"{prefix}.weight", f"{prefix}.bias") if k in model_sd]


def _classifier_status(model, model_sd, state, missing, mis_shaped) -> tuple[str, str]:
    """("kept" | "reset", reason): reset when only the class count differs or the head is absent."""
    keys = _classifier_keys(model, model_sd)
    if not keys:
        return "kept", ""
    if all(k in missing for k in keys):
        return "reset", "missing from the checkpoint"
    bad = [k for k in keys if k in mis_shaped]
    if not bad or any(k in missing for k in keys):
        return "kept", ""
    # Only the output dimension may differ: weight [C, in] vs [C', in], bias [C] vs [C'].
    for k in keys:
        m, c = tuple(model_sd[k].shape), tuple(state[k].shape)
        if len(m) != len(c) or m[1:] != c[1:]:
            return "kept", ""
    w = keys[0]
    return "reset", (f"has {state[w].shape[0]} classes, the model {model_sd[w].shape[0]}")


def _may_be_missing(model: nn.Module, key: str) -> bool:
    """PACT alphas and BN step counters may be absent (torchvision files)."""
    module_name, _, leaf = key.rpartition(".")
    if leaf == "num_batches_tracked":
        return True
    if leaf == "alpha":
        try:
            return isinstance(model.get_submodule(module_name), PACT)
        except AttributeError:
            return False
    return False


def _first(keys: list[str]) -> str:
    more = f", … (+{len(keys) - _N_LISTED} more)" if len(keys) > _N_LISTED else ""
    return ", ".join(keys[:_N_LISTED]) + more


def _shape(t: Tensor) -> str:
    return "[" + ",".join(str(s) for s in t.shape) + "]"
