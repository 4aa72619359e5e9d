"""How a float model is mapped onto macros (spec §9): the policy behind :func:`convert_to_acim`.

The reference maps every network the same way: the first conv sees signed image inputs and is
a digital W8A8 layer (its ``QuantConv2d``; ViTs keep the patch embedding float), the other
convs take unsigned post-ReLU inputs, ViT linears take signed inputs, attention parts (the
projections, QK^T and AV) may have their own macros, and single layers can get other macros
by qualified-name glob. This module turns those choices into the per-layer ``macro_for`` /
``options_for`` callbacks of :func:`asim.convert.convert_to_acim`, so plain-PyTorch users get
the same mapping as the application with keyword arguments::

    convert_to_acim(model, macro, noise, first_layer="digital",
                    layer_macros=[{"match": "layer4.*", "adc_bits": 6}])

Deltas are typed: :class:`MacroDelta` has every :class:`~asim.config.MacroConfig` field, each
``None`` (= inherit), so a misspelt field fails when it is given (or when Hydra composes).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from torch import nn

from .config import MacroConfig

__all__ = [
    "AttentionMacros",
    "FirstLayer",
    "LayerMacro",
    "MacroDelta",
    "MappingPolicy",
    "classifier_name",
    "first_conv_name",
    "macro_delta",
]

MACRO_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(MacroConfig))
"""The :class:`MacroConfig` field names, in declaration order."""


class FirstLayer(str, Enum):
    """How the network's first conv (``first_layer``) or its classifier / a language model's
    head (``last_layer``) is mapped (spec §1.7, §9.2-9.4)."""

    digital = "digital"
    """The reference's ``QuantConv2d``: fake-quantized W8A8 (``first_layer_bits``), signed
    input, never simulated on the macro, noise-free."""
    acim = "acim"
    """On the macro like every other layer, with signed inputs (it sees the image)."""
    float = "float"
    """Kept float (the reference ViTs' patch embedding, ``vit_quant_conv_proj=False``)."""


def _layer_choice(key: str, value: FirstLayer | str | None) -> FirstLayer | None:
    if value is None or isinstance(value, FirstLayer):
        return value
    try:
        return FirstLayer(value)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in FirstLayer)
        raise ValueError(f"{key}={value!r} is not valid; choose one of {choices} or None") from None


def _optional_fields(extra: Sequence[tuple[str, Any, Any]] = ()) -> list[tuple[str, Any, Any]]:
    hints = typing.get_type_hints(MacroConfig)
    out = list(extra)
    for name in MACRO_FIELDS:
        tp = hints[name]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        base = args[0] if args else tp  # `int | None` -> int
        out.append((name, Optional[base], field(default=None)))  # noqa: UP045 (OmegaConf)
    return out


MacroDelta = dataclasses.make_dataclass(
    "MacroDelta",
    _optional_fields(),
    namespace={
        "__doc__": "Every :class:`MacroConfig` field, each ``None`` (= keep the base macro's "
        "value): a typed delta, e.g. ``MacroDelta(input_bits=9)``."
    },
)
"""A typed MacroConfig delta (every field optional). Generated from :class:`MacroConfig`, so
the two can never disagree."""

LayerMacro = dataclasses.make_dataclass(
    "LayerMacro",
    _optional_fields([("match", str, field(default="???"))]),
    namespace={
        "__doc__": "One ``layer_macros`` entry: ``match`` (a qualified-name glob) and the "
        ":class:`MacroConfig` fields to change for the layers it matches."
    },
)
"""A typed ``layer_macros`` entry: ``match`` plus every MacroConfig field (None = keep)."""


@dataclass
class AttentionMacros:
    """MacroConfig deltas for the parts of every attention layer (spec §7.2), on top of the
    run's macro; e.g. ``qk=MacroDelta(input_bits=9)`` is the reference's ``qk_kbit=9``."""

    proj: MacroDelta = field(default_factory=MacroDelta)
    """qkv and output projections (ASiM ``proj_wbit``, ``proj_xbit``, ``proj_adc_prec``)."""
    qk: MacroDelta = field(default_factory=MacroDelta)
    """QK^T: ``weight_bits`` = q bits, ``input_bits`` = k bits (``qk_qbit``, ``qk_kbit``)."""
    av: MacroDelta = field(default_factory=MacroDelta)
    """AV: ``weight_bits`` = v bits, ``input_bits`` = score bits (``av_vbit``, ``av_abit``)."""


def _as_dict(delta: Any, where: str) -> dict[str, Any]:
    """The set fields of a MacroDelta / LayerMacro / mapping, validated against MacroConfig."""
    if dataclasses.is_dataclass(delta) and not isinstance(delta, type):
        items = {f.name: getattr(delta, f.name) for f in dataclasses.fields(delta)}
    elif isinstance(delta, Mapping):
        items = dict(delta)
    elif delta is None:
        return {}
    else:
        raise TypeError(f"{where}: expected a mapping of MacroConfig fields, got {delta!r}")
    items = {k: v for k, v in items.items() if v is not None}
    unknown = sorted(set(items) - set(MACRO_FIELDS) - {"match"})
    if unknown:
        raise ValueError(
            f"{where}: unknown MacroConfig field(s) {unknown}; valid fields: "
            f"{', '.join(sorted(MACRO_FIELDS))}"
        )
    return items


def macro_delta(macro: MacroConfig, delta: Any, where: str = "macro delta") -> MacroConfig:
    """``macro`` with the set fields of ``delta`` (MacroDelta or mapping) replaced; a bad
    field or value is a one-line ValueError prefixed with ``where``."""
    changes = _as_dict(delta, where)
    changes.pop("match", None)
    if not changes:
        return macro
    try:
        return macro.replace(**changes)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def first_conv_name(model: nn.Module) -> str:
    """Qualified name of the model's first conv: the model's ``first_conv`` attribute where it
    names one (the zoo's models, timm's convention), else the first ``nn.Conv2d`` in module
    order."""
    names = dict(model.named_modules())
    hint = getattr(model, "first_conv", None)
    if isinstance(hint, str) and isinstance(names.get(hint), nn.Conv2d):
        return hint
    for name, module in names.items():
        if isinstance(module, nn.Conv2d):
            return name
    raise ValueError(
        f"first_layer: {type(model).__name__} has no nn.Conv2d to treat as the first layer; "
        "pass first_layer=None"
    )


def classifier_name(model: nn.Module) -> str | None:
    """Qualified name of the classifier: the model's ``classifier_name`` attribute, else the
    last ``nn.Linear`` in module order (None if there is none)."""
    hint = getattr(model, "classifier_name", None)
    names = dict(model.named_modules())
    if isinstance(hint, str) and hint in names:
        return hint
    linears = [n for n, m in names.items() if type(m) is nn.Linear]
    return linears[-1] if linears else None


@dataclass
class MappingPolicy:
    """The mapping policy of one conversion (the keyword arguments of ``convert_to_acim``)."""

    macro: MacroConfig
    first_layer: FirstLayer | None = None
    first_layer_bits: int = 8
    signed_input: bool | None = None
    classifier_signed_input: bool | None = None
    layer_macros: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    attention: dict[str, MacroConfig] = field(default_factory=dict)
    trim_noise: float = 0.0
    attn_trim_noise: float = 0.0
    first: str | None = None
    classifier: str | None = None
    matched: set[str] = field(default_factory=set)
    # --- language models (asim.llm): the classifier is the LM head; attention modules whose
    # children are projections and whose NAME.qk / NAME.av are QK^T and AV
    last_layer: FirstLayer | None = None
    last_layer_bits: int = 8
    attention_layers: frozenset[str] = frozenset()

    @classmethod
    def build(
        cls,
        model: nn.Module,
        macro: MacroConfig,
        *,
        first_layer: FirstLayer | str | None = None,
        first_layer_bits: int = 8,
        signed_input: bool | None = None,
        classifier_signed_input: bool | None = None,
        layer_macros: Sequence[Any] = (),
        attention: AttentionMacros | Mapping[str, Any] | None = None,
        trim_noise: float = 0.0,
        attn_trim_noise: float = 0.0,
        last_layer: FirstLayer | str | None = None,
        last_layer_bits: int = 8,
        attention_layers: Sequence[str] = (),
    ) -> MappingPolicy:
        first_layer = _layer_choice("first_layer", first_layer)
        last_layer = _layer_choice("last_layer", last_layer)
        for key, value in (("trim_noise", trim_noise), ("attn_trim_noise", attn_trim_noise)):
            if value < 0:
                raise ValueError(f"{key}={value} must be >= 0 (percent)")
        parts: dict[str, MacroConfig] = {}
        if attention is not None:
            if isinstance(attention, Mapping):
                unknown = sorted(set(attention) - {"proj", "qk", "av"})
                if unknown:
                    raise ValueError(
                        f"attention: unknown part(s) {unknown}; the parts are proj, qk, av"
                    )
                deltas = {part: attention.get(part) for part in ("proj", "qk", "av")}
            else:
                deltas = {part: getattr(attention, part) for part in ("proj", "qk", "av")}
            for part, delta in deltas.items():
                parts[part] = macro_delta(macro, delta, f"attention.{part}")
        entries = []
        for i, entry in enumerate(layer_macros):
            delta = _as_dict(entry, f"layer_macros[{i}]")
            glob = delta.pop("match", None)
            if not isinstance(glob, str) or glob == "???":
                raise ValueError(
                    f"layer_macros[{i}] needs match: GLOB (a qualified layer name or glob) "
                    "next to its MacroConfig fields"
                )
            macro_delta(macro, delta, f"layer_macros[{i}]")  # validate before converting
            entries.append((glob, delta))
        first = first_conv_name(model) if first_layer is not None else None
        classifier = classifier_name(model)
        if last_layer is not None and classifier is None:
            raise ValueError(
                f"last_layer: {type(model).__name__} has no nn.Linear to treat as the last "
                "layer; pass last_layer=None"
            )
        return cls(
            macro=macro,
            first_layer=first_layer,
            first_layer_bits=int(first_layer_bits),
            signed_input=signed_input,
            classifier_signed_input=classifier_signed_input,
            layer_macros=entries,
            attention=parts,
            trim_noise=float(trim_noise),
            attn_trim_noise=float(attn_trim_noise),
            first=first,
            classifier=classifier,
            last_layer=last_layer,
            last_layer_bits=int(last_layer_bits),
            attention_layers=frozenset(attention_layers),
        )

    @property
    def exclude(self) -> list[str]:
        """Layers the policy keeps float (a float first or last layer)."""
        out = [self.first] if self.first_layer == FirstLayer.float else []
        return out + ([self.classifier] if self.last_layer == FirstLayer.float else [])

    def first_macro(self, bits: int | None = None) -> MacroConfig:
        """The digital first (or last) layer's macro: W``bits``A``bits`` (default
        ``first_layer_bits``)."""
        bits = self.first_layer_bits if bits is None else bits
        return MacroConfig(
            name=f"digital_w{bits}a{bits}",
            weight_bits=bits,
            input_bits=bits,
            act_scale=self.macro.act_scale,
            division=self.macro.division,
        )

    def macro_for(
        self, user: Callable[[str, nn.Module], MacroConfig | None] | None
    ) -> Callable[[str, nn.Module], MacroConfig | None]:
        """Per-layer macro: ``user(name, module)`` or the attention part's or the run's macro,
        then every matching ``layer_macros`` delta in order."""

        def macro_for(name: str, module: nn.Module) -> MacroConfig | None:
            base = user(name, module) if user is not None else None
            if base is None:
                base = self.macro
                part = self._attention_part(name, module)
                if part is not None and self.attention:
                    base = self.attention[part]
            for glob, delta in self.layer_macros:
                if fnmatch.fnmatchcase(name, glob):
                    self.matched.add(glob)
                    base = base.replace(**delta)
            return base

        return macro_for

    def options_for(
        self, user: Callable[[str, nn.Module], dict | None] | None
    ) -> Callable[[str, nn.Module], dict]:
        """Per-layer constructor options: the policy's, updated by ``user(name, module)``."""

        def options_for(name: str, module: nn.Module) -> dict:
            opts: dict[str, Any] = {}
            if name == self.first and self.first_layer == FirstLayer.digital:
                opts = {"digital": True, "signed_input": True, "macro": self.first_macro()}
                opts["noise"] = None
            elif name == self.classifier and self.last_layer == FirstLayer.digital:
                signed = self.classifier_signed_input
                opts = {"digital": True, "macro": self.first_macro(self.last_layer_bits)}
                opts["signed_input"] = True if signed is None else signed
                opts["noise"] = None
            elif isinstance(module, nn.MultiheadAttention):
                opts = {"trim_noise": self.trim_noise, "attn_trim_noise": self.attn_trim_noise}
            else:
                if name == self.first:  # an ACiM first layer sees the (signed) image
                    signed = True
                elif name == self.classifier and self.classifier_signed_input is not None:
                    signed = self.classifier_signed_input
                else:
                    signed = self.signed_input
                if signed is not None:
                    opts["signed_input"] = signed
                if self.trim_noise:
                    opts["trim_noise"] = self.trim_noise
            if user is not None:
                opts.update(user(name, module) or {})
            return opts

        return options_for

    def _attention_part(self, name: str, module: nn.Module) -> str | None:
        """``proj``/``qk``/``av`` for an attention layer's parts: a ``nn.MultiheadAttention``
        (and its ``NAME.qk``/``NAME.av``), or a language model's attention module's
        projections (its children) and ``NAME.qk``/``NAME.av`` (``attention_layers``)."""
        parent, _, leaf = name.rpartition(".")
        if isinstance(module, nn.MultiheadAttention):
            return leaf if name.endswith((".qk", ".av")) else "proj"
        if parent in self.attention_layers:
            return leaf if leaf in ("qk", "av") else "proj"
        return None

    def check_matched(self, model: nn.Module) -> None:
        """A ``layer_macros`` glob that selected no ACiM layer is an error (typo guard)."""
        unused = [glob for glob, _ in self.layer_macros if glob not in self.matched]
        if unused:
            names = [n for n, _ in model.named_modules() if n]
            raise ValueError(
                f"layer_macros: match {unused} selects no ACiM layer; names look like {names[:5]}"
            )
