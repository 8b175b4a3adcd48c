"""SFT examples for text models: prompt + response (+ EOS) with the loss on every assistant
turn, located by token offsets (never by searching decoded text)."""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch

from saferlhf.data.collate import pad_sequences
from saferlhf.data.templates import Template, encode_prompt_responses

IGNORE = -100


class SFTExample(NamedTuple):
    """One encoded demonstration.

    ``input_ids``: prompt + response (+ EOS), cut at ``max_length``. ``prompt_length``: where
    the last assistant turn starts (everything from there is a target). ``spans``: the
    ``[start, end)`` token ranges of the earlier assistant turns of a multi-turn record, also
    targets (empty for a single turn). Indexing ``e[0]``, ``e[1]`` works as for the plain
    ``(input_ids, prompt_length)`` pairs this used to be.
    """

    input_ids: list[int]
    prompt_length: int
    spans: tuple[tuple[int, int], ...] = ()


class PrefixUnstableTemplate(ValueError):
    """The chat template does not render a conversation as an extension of its prefixes."""


def _render(tokenizer, template: Template, messages: list[dict], *, generation_prompt: bool) -> str:
    """The text of ``messages``; ``generation_prompt`` opens the assistant's next turn."""
    if not messages:
        return ""
    if template.kind == "chat":
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    return template.render(tokenizer, messages)  # the plain template has no generation prompt switch


def assistant_spans(tokenizer, template: Template, messages: list[dict], prompt_ids: list[int]) -> list[tuple[int, int]]:
    """Token ranges ``[start, end)`` of the assistant turns inside ``prompt_ids`` (the tokens of
    ``messages`` rendered with a generation prompt, i.e. the context of the next assistant turn).

    The conversation is rendered prefix by prefix: for assistant turn k the text up to the start
    of its turn (``messages[:k]`` + generation prompt) and up to its end (``messages[:k+1]``).
    Each must be a text prefix of the next and of the whole (the template is *prefix-stable*);
    the character boundaries are then mapped to tokens through the tokenizer's offset mapping
    of the whole text (a token counts when it lies entirely inside the turn, whose trailing
    whitespace, the separator before the next turn, is left out), or, for tokenizers
    without offsets, by checking that each prefix tokenises to a prefix of ``prompt_ids``.
    The response is never located by searching decoded text. Raises
    :class:`PrefixUnstableTemplate` when the template or the tokenisation is not prefix-stable.
    """
    full = _render(tokenizer, template, messages, generation_prompt=True)
    bounds = []
    for k, m in enumerate(messages):
        if m.get("role") != "assistant":
            continue
        a = _render(tokenizer, template, messages[:k], generation_prompt=True)
        b = _render(tokenizer, template, messages[:k + 1], generation_prompt=False)
        if not (b.startswith(a) and full.startswith(b)):
            raise PrefixUnstableTemplate(
                f"assistant turn {k}: the chat template does not render the conversation as an "
                "extension of its prefixes (it rewrites earlier turns)")
        bounds.append((len(a), max(len(a), len(b.rstrip()))))  # trailing whitespace separates turns
    if not bounds:
        return []
    offsets = None
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        if list(enc["input_ids"]) == list(prompt_ids):
            offsets = enc["offset_mapping"]
    spans = []
    for s_char, e_char in bounds:
        if offsets is not None:
            inside = [i for i, (s, e) in enumerate(offsets) if s >= s_char and e <= e_char and e > s]
            if inside:
                spans.append((inside[0], inside[-1] + 1))
            continue
        s_ids = tokenizer(full[:s_char], add_special_tokens=False)["input_ids"] if s_char else []
        e_ids = tokenizer(full[:e_char], add_special_tokens=False)["input_ids"]
        if list(prompt_ids[:len(s_ids)]) != list(s_ids) or list(prompt_ids[:len(e_ids)]) != list(e_ids):
            raise PrefixUnstableTemplate(
                "the tokenizer does not tokenise the conversation as an extension of its prefixes "
                "(tokens merge across a turn boundary) and gives no offset mapping")
        if len(e_ids) > len(s_ids):
            spans.append((len(s_ids), len(e_ids)))
    return spans


def encode_sft_examples(records, tokenizer, template: Template, max_length: int, *,
                        strict: bool = False) -> list[SFTExample]:
    """Encode SFT records; the loss goes on every assistant turn (DESIGN §3.1).

    A single-turn record is ``prompt + response + EOS`` with the response as target, exactly as
    :func:`saferlhf.data.templates.encode_prompt_response` gives it (the encoding RM, CM and RL
    use). A ``messages`` record is encoded the same way around its *last* assistant turn (the
    earlier turns, rendered by the template, form the prompt) and its earlier assistant turns
    are targets too, located by token offsets (:func:`assistant_spans`). When the template is
    not prefix-stable, such a record falls back to its last assistant turn with a warning
    (``strict=True``: the error is raised). Records whose prompt alone does not fit in
    ``max_length`` are left out with a warning that counts them (never silently).
    """
    prompts, responses, multi = [], [], []
    for r in records:
        prompt, response = r.prompt_and_response()
        prompts.append(prompt)
        responses.append(response)
        multi.append(r.messages is not None and isinstance(prompt, list)
                     and any(m.get("role") == "assistant" for m in prompt))
    encoded = encode_prompt_responses(tokenizer, template, prompts, responses, max_length=None)
    out: list[SFTExample] = []
    too_long, unstable, first_error = 0, 0, None
    for r, prompt, (ids, plen), is_multi in zip(records, prompts, encoded, multi):
        if plen >= max_length:
            too_long += 1
            continue
        spans: tuple[tuple[int, int], ...] = ()
        if is_multi:
            try:
                spans = tuple(assistant_spans(tokenizer, template, prompt, ids[:plen]))
            except PrefixUnstableTemplate as e:
                if strict:
                    raise PrefixUnstableTemplate(f"{r.source or 'SFT record'}: {e}") from e
                unstable += 1
                first_error = first_error or f"{r.source or 'SFT record'}: {e}"
        out.append(SFTExample(ids[:max_length], plen, spans))
    if too_long:
        warnings.warn(f"SFT: {too_long} of {len(records)} records left out: their prompt is longer than "
                      f"max_length={max_length} tokens (raise --max-length to keep them)", stacklevel=2)
    if unstable:
        warnings.warn(f"SFT: {unstable} multi-turn records train on their last assistant turn only: "
                      f"{first_error}. Use a prefix-stable chat template to train every turn.", stacklevel=2)
    return out


def collate_sft(examples, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (IGNORE off the targets).

    ``examples``: :class:`SFTExample` or plain ``(input_ids, prompt_length)`` pairs.
    """
    ids, mask = pad_sequences([e[0] for e in examples], pad_id, side="right")
    target = torch.zeros_like(mask, dtype=torch.bool)
    for i, e in enumerate(examples):
        n = len(e[0])
        target[i, e[1]:n] = True  # the (last) response
        for s, t in (e[2] if len(e) > 2 else ()):
            target[i, s:min(t, n)] = True  # earlier assistant turns
    labels = torch.where(target & (mask == 1), ids, torch.full_like(ids, IGNORE))
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def warn_images_ignored(records, model: str, stage: str) -> None:
    """A text model trained on records that carry images reads their text only: say so."""
    n = sum(1 for r in records if getattr(r, "images", None))
    if n:
        warnings.warn(f"{stage}: {n} of {len(records)} records carry images but --model {model} is a text "
                      "model: the images are ignored (use a VLM to train on them)", stacklevel=4)


