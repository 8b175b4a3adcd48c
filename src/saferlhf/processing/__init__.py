"""Modality as an object: a :class:`Processor` turns prompts (+ images) (+ responses) into
model inputs, so trainers, scorers, critics and samplers never branch on the modality.

Two implementations:

* :class:`TextProcessor`: a tokenizer and a :class:`~saferlhf.data.templates.Template`;
  ``model_kwargs`` / ``logprob_kwargs`` are empty, images in records are ignored.
* :class:`~saferlhf.processing.vlm.VLMProcessor`: LLaVA- and Qwen2-VL-style models with any
  of their HF image processors (a tiny model's ``vlm_processor.json``, or a hub-style folder
  holding only ``config.json`` + ``preprocessor_config.json`` + tokenizer files, or an
  in-memory ``LlavaProcessor`` / ``Qwen2VLProcessor``).

:func:`as_processor` wraps whatever a user passes as ``processing_class`` (an HF tokenizer,
an HF processor, or a Processor); :func:`load_processor` reads one from a checkpoint folder.
Both kinds pass tokenizer attributes through (``pad_token_id``, ``decode``,
``save_pretrained`` …), so code that only reads ids takes either.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from saferlhf.data.collate import pad_sequences
from saferlhf.data.templates import (
    Prompt,
    Template,
    encode_prompt,
    encode_prompt_response,
    template_for,
)
from saferlhf.processing.vlm import (
    PROCESSOR_FILE,
    STYLES,
    EncodedPrompts,
    EncodedVLM,
    ImageInputs,
    TokenizerPassThrough,
    VLMBatch,
    VLMProcessor,
    hf_vlm_style,
    is_vlm_dir,
)

META_FILE = "saferlhf.json"
"""The saferlhf metadata saved beside a checkpoint's weights (template, stage, provenance)."""

__all__ = [
    "META_FILE",
    "PROCESSOR_FILE",
    "STYLES",
    "EncodedPrompts",
    "EncodedVLM",
    "ImageInputs",
    "Processor",
    "TextProcessor",
    "VLMBatch",
    "VLMProcessor",
    "as_processor",
    "is_vlm_dir",
    "load_processor",
    "load_tokenizer",
]


@runtime_checkable
class Processor(Protocol):
    """What every stage reads its inputs with."""

    modality: str  # "text" | "image-text"
    template: Template

    @property
    def pad_token_id(self) -> int: ...

    @property
    def eos_token_id(self) -> int: ...

    def encode_prompts(self, prompts: Sequence[Prompt], images: Sequence[Sequence[Any]] | None = None, *,
                       sources: Sequence[str] | None = None) -> EncodedPrompts:
        """Prompt ids for generation (+ vision inputs)."""

    def encode_texts(self, prompts: Sequence[Prompt], responses: Sequence[str], *, add_eos: Sequence[bool],
                     images: Sequence[Sequence[Any]] | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Right-padded ``(input_ids, attention_mask, model_kwargs)`` of prompt + response."""

    def model_kwargs(self, input_ids: torch.Tensor, image_inputs: ImageInputs | None) -> dict[str, Any]:
        """Extra keyword arguments of a forward pass over ``input_ids`` (vision inputs)."""

    def vision_logprob_kwargs(self, input_ids: torch.Tensor, image_inputs: ImageInputs | None) -> dict[str, Any]:
        """Extra keyword arguments of :func:`saferlhf.models.policy.forward_logprobs` for rows
        holding ``image_inputs`` (kept as :class:`ImageInputs`, so micro-batches get their own
        rows' images); empty for text."""

    def sft_examples(self, records: Sequence[Any], max_length: int, *, stage: str | None = None,
                     model: str = "the model") -> tuple[list, Any]:
        """``(examples, to_batch)`` for SFT: encoded (or, with images, collated lazily) examples
        and the function that batches a list of them (``input_ids``, ``attention_mask``,
        ``labels`` and the model's other inputs)."""

    def same_encoding(self, other: Any) -> bool:
        """True when ``other`` encodes every input to the same ids (a scorer may then read the
        policy's token ids as they are)."""

    def decode(self, ids, **kwargs) -> str: ...

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> Any: ...


class TextProcessor(TokenizerPassThrough):
    """A text model's processor: its tokenizer and prompt template."""

    modality = "text"

    def __init__(self, tokenizer, template: Template | None = None) -> None:
        if isinstance(tokenizer, TextProcessor):
            tokenizer = tokenizer.tokenizer
        self.tokenizer = tokenizer
        self.template = template if template is not None else template_for(tokenizer)

    # Tokenizer attributes pass through both ways, so text code that reads ids, or sets the pad
    # token, takes a processor (a set that stopped at the wrapper would leave the tokenizer as it
    # was, and what is saved or read afterwards would disagree).
    _OWN = frozenset({"tokenizer", "template"})

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._OWN or name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            setattr(self.tokenizer, name, value)

    def __getattr__(self, name: str) -> Any:
        if name == "tokenizer":  # not yet set (during unpickling)
            raise AttributeError(name)
        return getattr(self.tokenizer, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.tokenizer(*args, **kwargs)


    def encode_prompts(self, prompts, images=None, *, sources=None) -> EncodedPrompts:
        return EncodedPrompts([encode_prompt(self.tokenizer, self.template, p) for p in prompts])

    def encode_texts(self, prompts, responses, *, add_eos, images=None):
        ids = []
        for p, text, eos in zip(prompts, responses, add_eos, strict=True):
            full, _ = encode_prompt_response(self.tokenizer, self.template, p, text)
            ids.append(full if eos else full[:-1])
        seq, mask = pad_sequences(ids, self.tokenizer.pad_token_id, side="right")
        return seq, mask, {}

    def sft_examples(self, records, max_length: int, *, stage: str | None = None, model: str = "the model"):
        """``(examples, to_batch)``: the records encoded for SFT (loss on the assistant turns) and
        the function that right-pads a list of them into ``input_ids``/``attention_mask``/``labels``.
        ``stage``: warn (naming it) when records carry images this text model cannot read."""
        from saferlhf.processing.sft import collate_sft, encode_sft_examples, warn_images_ignored

        if stage is not None:
            warn_images_ignored(records, model, stage)
        examples = encode_sft_examples(records, self.tokenizer, self.template, max_length)
        return examples, lambda items: collate_sft(items, self.pad_token_id)

    def pair_examples(self, pairs, first, *, max_length: int, stage: str | None = None, model: str = "the model"):
        """``(items, to_batch)`` for pairwise training: per pair the token ids of the response named
        by ``first`` and of the other, cut at ``max_length`` (None when the prompt alone does not
        fit), and the function that batches items as one right-padded (2B, L) batch, the
        ``first`` rows then the others."""
        from saferlhf.data.templates import encode_prompt_responses
        from saferlhf.processing.sft import warn_images_ignored

        if stage is not None:
            warn_images_ignored(pairs, model, stage)
        prompts = [p.prompt for p in pairs]
        other = ["b" if f == "a" else "a" for f in first]
        enc = encode_prompt_responses(self.tokenizer, self.template, prompts + prompts,
                                      [p.response(f) for p, f in zip(pairs, first)]
                                      + [p.response(o) for p, o in zip(pairs, other)], max_length=None)
        n = len(pairs)
        items = [None if plen >= max_length else (hi[:max_length], enc[n + i][0][:max_length])
                 for i, (hi, plen) in enumerate(enc[:n])]

        def to_batch(batch):
            ids, mask = pad_sequences([b[0] for b in batch] + [b[1] for b in batch], self.pad_token_id, side="right")
            return {"input_ids": ids, "attention_mask": mask}

        return items, to_batch

    def scoring_batches(self, prompts, responses, *, images=None, max_length: int, batch_size: int,
                        sources=None):
        """``[(rows, inputs)]``: right-padded prompt + response batches for a score model, rows of
        similar length together (less padding; a row's score does not depend on its batch). A
        too-long sequence loses the end of its response (as in training); when the prompt alone
        is longer than ``max_length`` the row is the last ``max_length // 2`` prompt tokens and
        the start of the response (with a warning that counts them)."""
        from saferlhf.data.templates import encode_prompt_responses

        enc = encode_prompt_responses(self.tokenizer, self.template, list(prompts), list(responses), max_length=None)
        seqs, cut_prompts = [], 0
        for ids, plen in enc:
            if len(ids) > max_length:
                if plen < max_length:
                    ids = ids[:max_length]
                else:
                    keep_prompt = max_length // 2
                    ids = ids[plen - keep_prompt:plen] + ids[plen:plen + max_length - keep_prompt]
                    cut_prompts += 1
            seqs.append(ids)
        if cut_prompts:
            warnings.warn(f"{cut_prompts} of {len(seqs)} sequences have a prompt longer than max_length="
                          f"{max_length}: scored on the end of the prompt and the start of the response "
                          "(raise --max-length)", stacklevel=3)
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        batches = []
        for i in range(0, len(order), batch_size):
            rows = order[i:i + batch_size]
            seq, mask = pad_sequences([seqs[j] for j in rows], self.pad_token_id, side="right")
            batches.append((rows, {"input_ids": seq, "attention_mask": mask}))
        return batches

    def model_kwargs(self, input_ids, image_inputs=None) -> dict[str, Any]:
        return {}

    def vision_logprob_kwargs(self, input_ids, image_inputs=None) -> dict[str, Any]:
        return {}

    def same_encoding(self, other: Any) -> bool:
        other = as_processor(other)
        return (other.modality == self.modality
                and other.tokenizer.get_vocab() == self.tokenizer.get_vocab()
                and other.eos_token_id == self.eos_token_id
                and other.template == self.template)


    def save_pretrained(self, save_directory, **kwargs):
        return self.tokenizer.save_pretrained(save_directory, **kwargs)

    def __repr__(self) -> str:
        return f"TextProcessor({type(self.tokenizer).__name__}, template={self.template.kind})"


def as_processor(obj: Any, template: Template | None = None) -> TextProcessor | VLMProcessor:
    """The :class:`Processor` of ``obj``: a Processor, an HF tokenizer, or an HF multimodal
    processor (``LlavaProcessor``, ``Qwen2VLProcessor`` …: its tokenizer and image processor).
    ``template`` replaces a text processor's template; a :class:`VLMProcessor` keeps the
    template saved with it (image placeholders are part of it)."""
    if isinstance(obj, VLMProcessor):
        return obj
    if isinstance(obj, TextProcessor):
        return obj if template is None or template == obj.template else TextProcessor(obj.tokenizer, template)
    image_processor = getattr(obj, "image_processor", None)
    inner = getattr(obj, "tokenizer", None)
    if image_processor is not None and inner is not None:
        return VLMProcessor.from_hf_processor(obj, template=template)
    if inner is not None and not hasattr(obj, "get_vocab"):
        obj = inner
    if not hasattr(obj, "get_vocab"):
        raise TypeError(f"processing_class must be a tokenizer or a processor, got {type(obj).__name__}")
    return TextProcessor(obj, template)


def load_tokenizer(path: str | os.PathLike, *, padding_side: str | None = None,
                   trust_remote_code: bool = False):
    """The HF tokenizer of a folder (or hub id); a missing pad token falls back to EOS
    (generation and score models need one)."""
    from transformers import AutoTokenizer

    return prepare_tokenizer(AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code),
                             padding_side=padding_side)


def prepare_tokenizer(tok, *, padding_side: str | None = None):
    """Give ``tok`` a pad token (EOS when it has none) and, when given, a padding side."""
    if tok.pad_token_id is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    if padding_side is not None:
        tok.padding_side = padding_side
    return tok


def saved_template(path: str | os.PathLike, tokenizer) -> Template:
    """The template saved with a checkpoint (its ``saferlhf.json``), else the tokenizer's
    default (chat template or the documented fallback)."""
    meta_path = Path(path) / META_FILE
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if "template" in meta:
            return Template.from_dict(meta["template"])
    return template_for(tokenizer)


def load_processor(path: str | os.PathLike) -> TextProcessor | VLMProcessor:
    """The processor of a checkpoint folder: a :class:`VLMProcessor` for a VLM (a
    ``vlm_processor.json``, or an HF VLM folder with ``preprocessor_config.json``; its template
    is the one saved with the processor), else a :class:`TextProcessor` with the checkpoint's
    saved template."""
    if is_vlm_dir(path) or hf_vlm_style(path) is not None:
        return VLMProcessor.from_pretrained(path)
    tok = load_tokenizer(path)
    return TextProcessor(tok, saved_template(path, tok))
