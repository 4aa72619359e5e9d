"""Language models on the macro: Hugging Face causal LMs with every matmul on ACiM macros.

:func:`asim.convert_to_acim` converts a ``transformers`` causal LM (GPT-2, LLaMA, Qwen, ...)
with this package: every ``nn.Linear`` and GPT-2 ``Conv1D`` becomes a token layer
(:class:`ACiMTokenLinear`, :class:`ACiMConv1D`), and every self-attention module gets an
:class:`ACiMAttention` that runs QK^T and AV on their macros with the KV cache written into the
array, through the ``"asim"`` attention implementation registered with ``transformers``'
``AttentionInterface``. Embeddings (lookups) and norms stay digital; the LM head follows the
mapping policy (``last_layer=``)::

    from transformers import AutoModelForCausalLM
    import asim
    lm = AutoModelForCausalLM.from_pretrained("gpt2")
    sim = asim.convert_to_acim(lm, asim.MacroConfig(act_scale="sample"), asim.NoiseConfig())
    sim.generate(ids, max_new_tokens=20)

Needs ``transformers`` (``pip install -e ".[llm]"``); ``import asim`` does not.
"""

from .attention import ACiMAttention, FloatAttention, attention_forward
from .hf import ATTENTION, ACiMConv1D, attention_modules, decode
from .tokens import HEAD_BITS, POSITION_BITS, ACiMTokenLinear, TokenIndex

__all__ = [
    "ATTENTION",
    "HEAD_BITS",
    "POSITION_BITS",
    "ACiMAttention",
    "ACiMConv1D",
    "ACiMTokenLinear",
    "FloatAttention",
    "TokenIndex",
    "attention_forward",
    "attention_modules",
    "decode",
]
