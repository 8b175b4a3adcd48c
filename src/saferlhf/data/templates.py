"""Prompt templates and exact prompt/response tokenisation.

The tokenizer's (or processor's) own chat template is used when it has one; otherwise the
documented fallback, the classic Beaver template that matches PKU's released checkpoints::

    BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:

The template is saved with every checkpoint (``Template.to_dict``), so evaluation and RL use
exactly what training used. The response is never located by searching decoded text: prompt
and response are tokenised separately and concatenated, so the boundary is a token offset.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

FALLBACK_TEMPLATE = "BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:"

Prompt = str | list[dict[str, Any]]


@dataclass(frozen=True)
class Template:
    """How a prompt becomes text for a model.

    kind: ``"chat"`` (the tokenizer's ``apply_chat_template``) or ``"plain"`` (``fmt``).
    response_prefix: text put before the response when it is tokenised on its own (a space
    for the plain template, so BPE sees `` word`` as it would in running text; for a chat
    template, whatever the template itself puts there: :func:`chat_response_prefix`).
    """

    kind: str = "plain"
    fmt: str = FALLBACK_TEMPLATE
    response_prefix: str = " "

    def render(self, tokenizer, prompt: Prompt) -> str:
        """The text of the prompt up to and including the start of the assistant's turn."""
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        if self.kind == "chat":
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        # Plain template: earlier turns (if any) are joined in the same style.
        parts = []
        for m in messages:
            if m["role"] == "user":
                parts.append(self.fmt.format(prompt=m["content"]))
            elif m["role"] == "assistant":
                parts.append(" " + m["content"])
            else:  # system
                parts.append(m["content"] + " ")
        return "".join(parts)

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, str] | None) -> Template:
        return cls(**d) if d else cls()


def template_for(tokenizer) -> Template:
    """The chat template when the tokenizer has one, the documented fallback otherwise."""
    if getattr(tokenizer, "chat_template", None):
        return Template(kind="chat", fmt="", response_prefix=chat_response_prefix(tokenizer))
    return Template()


_PROBE = "saferlhfprobe"


def chat_response_prefix(tokenizer) -> str:
    """What the tokenizer's chat template writes between the generation prompt and the
    assistant's text: ``""`` for ``<|im_start|>assistant\n`` + text (SmolLM2, Qwen, Llama 3),
    ``" "`` for ``ASSISTANT:`` + `` text`` (the tiny models' template). Read off the template
    itself by rendering a probe reply, so prompt + prefix + response is exactly the text
    ``apply_chat_template`` gives for the conversation; ``""`` when the generation prompt is
    not a prefix of the rendered conversation (or rendering fails)."""
    user = {"role": "user", "content": "hi"}
    try:
        gen = tokenizer.apply_chat_template([user], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template([user, {"role": "assistant", "content": _PROBE}], tokenize=False)
    except Exception:  # noqa: BLE001 - a template that cannot render this probe: no prefix
        return ""
    if not (isinstance(gen, str) and isinstance(full, str) and full.startswith(gen)):
        return ""
    at = full.find(_PROBE, len(gen))
    return full[len(gen):at] if at >= 0 else ""


def encode_prompt(tokenizer, template: Template, prompt: Prompt) -> list[int]:
    """Token ids of the rendered prompt (no special tokens added by the tokenizer)."""
    return tokenizer(template.render(tokenizer, prompt), add_special_tokens=False)["input_ids"]


def encode_response(tokenizer, template: Template, response: str, *, add_eos: bool = True) -> list[int]:
    """Token ids of a response, ending with EOS (the terminal token scores are read at)."""
    ids = tokenizer(template.response_prefix + response, add_special_tokens=False)["input_ids"]
    if add_eos and tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    return ids


def encode_prompt_response(
    tokenizer,
    template: Template,
    prompt: Prompt,
    response: str,
    *,
    max_length: int | None = None,
) -> tuple[list[int], int]:
    """``(input_ids, prompt_length)`` of prompt + response + EOS.

    When ``max_length`` cuts the sequence, the prompt is kept and the response truncated
    (its EOS is then lost, as for a truncated generation).
    """
    p = encode_prompt(tokenizer, template, prompt)
    r = encode_response(tokenizer, template, response)
    ids = p + r
    if max_length is not None and len(ids) > max_length:
        if len(p) >= max_length:
            raise ValueError(
                f"prompt is {len(p)} tokens, longer than max_length={max_length}; "
                "raise max_length or shorten the prompt"
            )
        ids = ids[:max_length]
    return ids, len(p)


def encode_prompt_responses(tokenizer, template, prompts: Sequence, responses: Sequence[str], *,
                            max_length: int | None = None) -> list[tuple[list[int], int]]:
    """Batched :func:`saferlhf.data.templates.encode_prompt_response`: the same ids, faster.

    Each distinct prompt is rendered and tokenised once, and the texts go to the tokenizer in
    one call (the fast tokenizers encode a list in Rust), so thousands of pairs encode in a
    fraction of a second. The result equals ``[encode_prompt_response(...) for ...]``: the prompt
    and ``template.response_prefix + response`` are tokenised separately (no special tokens),
    EOS is appended and a too-long sequence loses the end of its response.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    keys = [p if isinstance(p, str) else json.dumps(p, sort_keys=True) for p in prompts]
    unique: dict[str, int] = {}
    first: list = []
    for k, p in zip(keys, prompts):
        if k not in unique:
            unique[k] = len(first)
            first.append(p)
    try:
        texts = [template.render(tokenizer, p) for p in first]
        prompt_ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        resp_ids = tokenizer([template.response_prefix + r for r in responses],
                             add_special_tokens=False)["input_ids"] if responses else []
    except (TypeError, ValueError):  # a tokenizer without batch encoding: one at a time
        prompt_ids = [encode_prompt(tokenizer, template, p) for p in first]
        resp_ids = [encode_response(tokenizer, template, r, add_eos=False) for r in responses]
    eos = tokenizer.eos_token_id
    out = []
    for k, r in zip(keys, resp_ids):
        p = prompt_ids[unique[k]]
        ids = list(p) + list(r) + ([eos] if eos is not None else [])
        if max_length is not None and len(ids) > max_length:
            if len(p) >= max_length:
                raise ValueError(f"prompt is {len(p)} tokens, longer than max_length={max_length}; "
                                 "raise max_length or shorten the prompt")
            ids = ids[:max_length]
        out.append((ids, len(p)))
    return out
