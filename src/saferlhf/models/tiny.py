"""Tiny models (no hub access): small Llama-style / GPT-2-style causal LMs sized to a tokenizer.

Used by the tests, the verifiable world and the demo; built from configs in code. The
locally-built tokenizers (word-level, byte-level BPE) are in :mod:`saferlhf.data.tokenizers`
and re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

# The tokenizer builders live with the data (the world saves its tokenizer); re-exported here.
from saferlhf.data.tokenizers import (  # noqa: F401
    BOS,
    EOS,
    PAD,
    SIMPLE_CHAT_TEMPLATE,
    SPECIAL_TOKENS,
    UNK,
    build_word_level_tokenizer,
    train_bpe_tokenizer,
)

if TYPE_CHECKING:  # model classes are imported lazily
    from transformers import GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

def _special_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    return {
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


def tiny_llama_config(
    tokenizer: PreTrainedTokenizerFast | None = None,
    *,
    vocab_size: int | None = None,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 128,
) -> LlamaConfig:
    """Config of a tiny Llama-style causal LM (RMSNorm, RoPE, SwiGLU, GQA-capable)."""
    from transformers import LlamaConfig

    ids = _special_ids(tokenizer) if tokenizer is not None else {}
    return LlamaConfig(
        vocab_size=vocab_size or len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=False,
        **ids,
    )


def tiny_llama(tokenizer: PreTrainedTokenizerFast | None = None, *, seed: int = 0, **kwargs) -> LlamaForCausalLM:
    """A tiny Llama-style causal LM sized to ``tokenizer`` (see :func:`tiny_llama_config`)."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(tokenizer, **kwargs))


def tiny_gpt2(
    tokenizer: PreTrainedTokenizerFast | None = None,
    *,
    vocab_size: int | None = None,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    max_position_embeddings: int = 128,
    seed: int = 0,
) -> GPT2LMHeadModel:
    """A tiny GPT-2-style causal LM (learned absolute positions, LayerNorm, GELU)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    ids = _special_ids(tokenizer) if tokenizer is not None else {}
    cfg = GPT2Config(
        vocab_size=vocab_size or len(tokenizer),
        n_embd=hidden_size,
        n_layer=num_layers,
        n_head=num_heads,
        n_positions=max_position_embeddings,
        **ids,
    )
    return GPT2LMHeadModel(cfg)


def toy_corpus(words: Sequence[str] = (), n: int = 200) -> list[str]:
    """A small deterministic English-like corpus for training test BPE tokenizers."""
    base = [
        "the quick brown fox jumps over the lazy dog",
        "how do I bake bread at home with simple steps",
        "I cannot help with that request, but here is a safer idea",
        "first mix the flour, then add water and knead the dough",
        "please explain how a computer network routes packets",
        *words,
    ]
    return [base[i % len(base)] + f" {i}" for i in range(n)]
