"""Swap the layers of any ``nn.Module`` for ACiM layers and back (style §5)."""

from __future__ import annotations

import copy
import fnmatch
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from torch import nn

from .config import MacroConfig, NoiseConfig
from .layers import ACiMConv2d, ACiMLayer, ACiMLinear, ACiMMultiheadAttention
from .mapping import AttentionMacros, FirstLayer, MappingPolicy

__all__ = ["LAYER_MAP", "acim_modules", "convert_to_acim", "resample_noise", "set_mode", "to_float"]

log = logging.getLogger("asim")

LAYER_MAP: dict[type[nn.Module], type[ACiMLayer]] = {
    nn.Conv2d: ACiMConv2d,
    nn.Linear: ACiMLinear,
    nn.MultiheadAttention: ACiMMultiheadAttention,
}
"""Exact float types converted by default. ``asim.models.layers.ScaledMultiheadAttention``
(the reference's attention scale) is added when that module is importable."""

try:  # the float ViT attention with the reference's scale (a float model layer)
    from .models.layers import ScaledMultiheadAttention

    LAYER_MAP[ScaledMultiheadAttention] = ACiMMultiheadAttention
except ImportError:  # pragma: no cover - models are optional for the library core
    pass


def _excluded(name: str, patterns: Sequence[str], used: set[str]) -> bool:
    parts = name.split(".")
    prefixes = [".".join(parts[: k + 1]) for k in range(len(parts))]
    hit = False
    for pat in patterns:
        if any(fnmatch.fnmatchcase(p, pat) for p in prefixes):
            used.add(pat)
            hit = True
    return hit


def convert_to_acim(
    model: nn.Module,
    macro: MacroConfig | None = None,
    noise: NoiseConfig | None = None,
    *,
    first_layer: FirstLayer | str | None = None,
    first_layer_bits: int = 8,
    last_layer: FirstLayer | str | None = None,
    last_layer_bits: int = 8,
    signed_input: bool | None = None,
    classifier_signed_input: bool | None = None,
    layer_macros: Sequence[Any] = (),
    attention: AttentionMacros | dict | None = None,
    trim_noise: float = 0.0,
    attn_trim_noise: float = 0.0,
    exclude: Sequence[str] = (),
    macro_for: Callable[[str, nn.Module], MacroConfig | None] | None = None,
    options_for: Callable[[str, nn.Module], dict | None] | None = None,
    mode: str = "simulate",
    layer_map: dict[type[nn.Module], type[ACiMLayer]] | None = None,
    inplace: bool = False,
) -> nn.Module:
    """Replace every layer whose exact type is in ``layer_map`` by its ACiM counterpart.

    Weights are kept (``construct, copy state``); a replaced module is not descended into,
    so ``nn.MultiheadAttention`` is replaced as a unit, with its ``out_proj``. The mapping
    keywords (``first_layer`` ... ``attn_trim_noise``) give the reference's mapping (spec §9,
    :mod:`asim.mapping`) without hand-written callbacks::

        convert_to_acim(resnet, macro, noise, first_layer="digital")        # the reference CNNs
        convert_to_acim(vit, macro, noise, first_layer="float", signed_input=True,
                        attention={"qk": {"input_bits": 9}})              # the reference ViTs

    Args:
        model: any model; deep-copied unless ``inplace``.
        macro: the macro for every converted layer (default ``MacroConfig()``).
        noise: read-out noise for every converted layer (None: noise-free).
        first_layer: how the model's first conv is mapped (found by
            :func:`asim.mapping.first_conv_name`): ``"digital"`` (the reference's W8A8
            ``QuantConv2d``, signed input, noise-free), ``"acim"`` (on the macro, signed
            input), ``"float"`` (kept float), or None (like every other layer).
        first_layer_bits: weight and input bits of a digital first layer.
        last_layer: how the classifier (the model's ``classifier_name`` or its last
            ``nn.Linear``: a language model's LM head) is mapped: ``"digital"``, ``"acim"``,
            ``"float"`` or None (like every other layer), as ``first_layer``.
        last_layer_bits: weight and input bits of a digital last layer.
        signed_input: signedness of the other ACiM layers (None: each layer type's default,
            unsigned for convs, signed for linears and attention).
        classifier_signed_input: signedness of the classifier (the model's
            ``classifier_name`` or its last ``nn.Linear``); None: as ``signed_input``.
        layer_macros: per-layer MacroConfig deltas ``{"match": GLOB, FIELD: VALUE, ...}``
            (or :class:`asim.mapping.LayerMacro`), applied in order to the layers whose
            qualified name (attention parts: ``NAME.qk``, ``NAME.av``) matches GLOB; a glob
            that selects no layer is an error.
        attention: MacroConfig deltas of the attention parts ``proj``, ``qk``, ``av``
            (:class:`asim.mapping.AttentionMacros` or a dict of dicts).
        trim_noise: noise-aware-training output perturbation of convs, linears and
            projections, % (spec §1.6).
        attn_trim_noise: the same for QK^T and AV, %.
        exclude: qualified-name globs of modules (and their children) to keep float, e.g.
            ``["conv1", "fc"]``; a glob that matches nothing is an error (typo guard).
        macro_for: per-layer macro: ``macro_for(name, module)`` returns a MacroConfig or None
            (None: ``macro`` or the attention part's; ``layer_macros`` apply on top). For
            attention it is also asked for ``name + ".qk"`` and ``name + ".av"``, the macros of
            QK^T and AV.
        options_for: per-layer keyword arguments for the ACiM constructor (``signed_input``,
            ``mode``, ``trim_noise``, ``digital``, ``noise``, ...), or None; they override
            the mapping keywords' choices for that layer.
        mode: initial mode of every converted layer.
        layer_map: float type -> ACiM type (default :data:`LAYER_MAP`).
        inplace: modify ``model`` instead of a copy.

    A Hugging Face ``transformers`` causal LM (GPT-2, LLaMA, Qwen, ...) is converted with
    :mod:`asim.llm`: GPT-2's ``Conv1D`` too, every token its own sample, and QK^T and AV of
    every self-attention module on their macros (``NAME.qk``, ``NAME.av``) with the KV cache
    written into the array.

    Returns:
        The converted model.
    """
    macro = MacroConfig() if macro is None else macro
    llm = _llm_support(model)  # --- language models (asim.llm) ---
    attention_layers: dict[str, nn.Module] = {}
    if llm is not None:
        llm.prepare(model, macro, attn_trim_noise)
        if layer_map is None:
            layer_map = {**LAYER_MAP, **llm.LAYER_MAP}
    layer_map = LAYER_MAP if layer_map is None else layer_map
    if not inplace:
        model = copy.deepcopy(model)
    if llm is not None:
        attention_layers = llm.attention_modules(model)
    policy = MappingPolicy.build(
        model,
        macro,
        first_layer=first_layer,
        first_layer_bits=first_layer_bits,
        last_layer=last_layer,
        last_layer_bits=last_layer_bits,
        attention_layers=tuple(attention_layers),
        signed_input=signed_input,
        classifier_signed_input=classifier_signed_input,
        layer_macros=layer_macros,
        attention=attention,
        trim_noise=trim_noise,
        attn_trim_noise=attn_trim_noise,
    )
    exclude = [*exclude, *policy.exclude]
    macro_for = policy.macro_for(macro_for)
    options_for = policy.options_for(options_for)
    used: set[str] = set()
    names = dict(model.named_modules())
    for name in names:
        _excluded(name, exclude, used)
    unused = [p for p in exclude if p not in used]
    if unused:
        raise ValueError(
            f"convert_to_acim: exclude pattern(s) {unused} match no module; "
            f"module names look like {list(names)[1:6]}"
        )
    converted: list[str] = []

    def visit(parent: nn.Module, prefix: str) -> None:
        for child_name, child in list(parent.named_children()):
            name = f"{prefix}.{child_name}" if prefix else child_name
            cls = layer_map.get(type(child))
            if cls is None or _excluded(name, exclude, set()):
                if not isinstance(child, ACiMLayer):
                    visit(child, name)
                continue
            kwargs = dict(options_for(name, child) or {}) if options_for else {}
            layer_macro = (
                kwargs.pop("macro", None)
                or (macro_for(name, child) if macro_for else None)
                or macro
            )
            layer_noise = kwargs.pop("noise", noise)
            kwargs.setdefault("mode", mode)
            if cls is ACiMMultiheadAttention and macro_for is not None:
                kwargs.setdefault("qk_macro", macro_for(name + ".qk", child))
                kwargs.setdefault("av_macro", macro_for(name + ".av", child))
            try:
                new = cls.from_float(child, macro=layer_macro, noise=layer_noise, **kwargs)
            except (ValueError, TypeError) as err:
                raise ValueError(
                    f"cannot convert layer {name!r} ({type(child).__name__}): "
                    f"{err}; or pass exclude=[{name!r}]"
                ) from None
            setattr(parent, child_name, new)
            converted.append(name)

    visit(model, "")
    if llm is not None:  # QK^T and AV of every self-attention module, the token ids
        done = llm.attach(
            model,
            attention_layers,
            macro_for,
            noise,
            mode,
            lambda name: _excluded(name, exclude, set()),
        )
        converted += [f"{name}.acim" for name in done]
    policy.check_matched(model)
    log.info("convert_to_acim: %d layers converted: %s", len(converted), ", ".join(converted))
    return model


def _llm_support(model: nn.Module):
    """:mod:`asim.llm.hf` for a ``transformers`` model (a ``PreTrainedModel``, whose module
    is then imported already), else None: ``transformers`` is never imported here."""
    modeling = sys.modules.get("transformers.modeling_utils")
    if modeling is None or not isinstance(model, modeling.PreTrainedModel):
        return None
    from .llm import hf

    return hf


def to_float(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Replace every ACiM layer by the float torch layer it came from, weights kept."""
    if not inplace:
        model = copy.deepcopy(model)
    if isinstance(model, ACiMLayer):
        return model.to_float()

    def visit(parent: nn.Module) -> None:
        for child_name, child in list(parent.named_children()):
            if isinstance(child, ACiMLayer):
                setattr(parent, child_name, child.to_float())
            else:
                visit(child)

    visit(model)
    return model


def acim_modules(model: nn.Module) -> Iterator[tuple[str, ACiMLayer]]:
    """``(name, layer)`` for every ACiM layer in ``model``, like ``named_modules``."""
    for name, module in model.named_modules():
        if isinstance(module, ACiMLayer):
            yield name, module


def set_mode(model: nn.Module, mode: str) -> nn.Module:
    """Set ``mode`` (``train``/``inference``/``simulate``) on every non-digital ACiM layer."""
    for _, module in acim_modules(model):
        if not module.digital:
            module.mode = mode
    return model


def resample_noise(model: nn.Module, seed: int | None) -> nn.Module:
    """Seed every layer's noise stream from ``seed`` (and its position): a new, repeatable
    chip. ``None`` returns the layers to torch's global RNG."""
    for k, (_, module) in enumerate(acim_modules(model)):
        module.reseed(None if seed is None else (int(seed) * 1_000_003 + 7919 * k) % (2**62))
        module.chip_layer = k  # the layer of a NoiseConfig.chip_seed chip (spec §4.7)
    return model
