"""Generic formats, so any Hugging Face preference, SFT or prompt set can be used.

* ``preference`` (TRL style): ``prompt``/``chosen``/``rejected``. ``chosen`` and ``rejected``
  are strings, or conversational lists of messages; without a ``prompt`` column the prompt is
  the messages they share before their last (assistant) turn. Anthropic-HH-style strings
  (``"\\n\\nHuman: ...\\n\\nAssistant: ..."``) are split into turns the same way. ``chosen``
  becomes response ``a`` and is the *better* one (``chosen_is="safer"`` or ``"both"`` when
  the set ranks harmlessness).
* ``sft``: ``messages`` (a chat; loss on assistant turns) or ``prompt`` + ``completion`` /
  ``response``.
* ``prompts``: ``prompt`` (or ``question``) alone, other fields (e.g. ``category``) kept.

Columns with other names are mapped by the loader's ``column_map``
(``{"prompt": "question", "chosen": "pos"}``) before these adapters see the row.
"""

from __future__ import annotations

import re
from typing import Any

from saferlhf.data.adapters.base import Adapter, RowContext
from saferlhf.data.adapters.images import row_images
from saferlhf.data.schema import PreferencePair, PromptRecord, SFTRecord
from saferlhf.data.validation import (
    IDENTICAL_RESPONSES,
    ILL_TYPED,
    MISSING_FIELD,
    RecordProblem,
    as_messages,
    as_prompt,
    as_text,
    is_missing,
)

CHOSEN_IS = ("better", "safer", "both")

FIELD_NAMES = {
    "response_a": "chosen", "response_b": "rejected", "safer": "chosen",
    "safe_a": "safe_a", "safe_b": "safe_b", "severity_a": "severity_a", "severity_b": "severity_b",
}

_HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def _hh_turns(text: str) -> list[dict[str, str]] | None:
    """Anthropic-HH text -> chat turns, or None when the text has no such markers."""
    parts = _HH_TURN.split(text)
    if len(parts) < 3:
        return None
    # parts = [preamble, role, content, role, content, ...]; the preamble is normally empty.
    return [{"role": _HH_ROLES[parts[i]], "content": parts[i + 1]} for i in range(1, len(parts), 2)]


def _as_turns(value: Any, field: str) -> list[dict[str, Any]]:
    """``chosen``/``rejected`` as a list of turns (strings become one assistant turn)."""
    if isinstance(value, str):
        return _hh_turns(value) or [{"role": "assistant", "content": as_text(value, field)}]
    return as_messages(value, field)


def _final_response(tail: list[dict[str, Any]], field: str) -> str:
    if len(tail) != 1 or tail[0]["role"] != "assistant":
        raise RecordProblem(
            ILL_TYPED, field,
            f"after the turns shared with the other response, '{field}' has {len(tail)} turns "
            f"(roles {[m['role'] for m in tail]}), not one assistant turn",
            "give chosen and rejected the same conversation and differing only in the last "
            "assistant turn, or give a 'prompt' column",
        )
    return as_text(tail[0]["content"], f"{field}[-1].content")


class PreferenceAdapter(Adapter):
    name = "preference"
    kind = "pair"
    description = "TRL-style prompt/chosen/rejected (strings or conversations)"
    consumed = frozenset({"prompt", "chosen", "rejected", "image", "images"})

    signatures = (frozenset({"chosen", "rejected"}),)

    def convert(self, row: dict[str, Any], ctx: RowContext) -> PreferencePair:
        get = row.get
        chosen, rejected = get("chosen"), get("rejected")
        has_prompt = not is_missing(get("prompt"))
        if has_prompt and isinstance(chosen, str) and isinstance(rejected, str):
            # The common case, and the fast one: explicit prompt, plain-text responses.
            prompt = as_prompt(get("prompt"), "prompt")
            response_a, response_b = as_text(chosen, "chosen"), as_text(rejected, "rejected")
        else:
            prompt, response_a, response_b = self._split(
                as_prompt(get("prompt"), "prompt") if has_prompt else None,
                _as_turns(chosen, "chosen"), _as_turns(rejected, "rejected"),
            )
        chosen_is = ctx.chosen_is
        return self.pair(
            row, ctx, FIELD_NAMES,
            prompt=prompt,
            response_a=response_a,
            response_b=response_b,
            better="a" if chosen_is in ("better", "both") else None,
            safer="a" if chosen_is in ("safer", "both") else None,
            images=row_images(row, ctx),
        )

    @staticmethod
    def _split(prompt, chosen: list[dict[str, Any]], rejected: list[dict[str, Any]]):
        """(prompt, chosen text, rejected text) from two conversations sharing a prefix."""
        shared = 0
        while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
            shared += 1
        if shared == len(chosen) == len(rejected):
            raise RecordProblem(IDENTICAL_RESPONSES, "rejected", "'chosen' and 'rejected' are identical",
                                "remove the record or replace one response")
        response_a = _final_response(chosen[shared:], "chosen")
        response_b = _final_response(rejected[shared:], "rejected")
        context = chosen[:shared]
        if prompt is None:
            if not context:
                raise RecordProblem(
                    MISSING_FIELD, "prompt",
                    "no 'prompt' column, and chosen/rejected share no turns to take it from",
                    "give a prompt column (column_map={'prompt': '<its name>'})",
                )
            return context, response_a, response_b
        if context:  # turns shared by both responses continue the given prompt
            turns = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            return [*turns, *context], response_a, response_b
        return prompt, response_a, response_b


class SFTAdapter(Adapter):
    name = "sft"
    kind = "sft"
    description = "SFT demonstrations: messages, or prompt + completion/response"
    consumed = frozenset({"messages", "prompt", "completion", "response", "image", "images"})

    signatures = (frozenset({"messages"}), frozenset({"prompt", "completion"}), frozenset({"prompt", "response"}))

    def convert(self, row: dict[str, Any], ctx: RowContext) -> SFTRecord:
        get = row.get
        images, source, metadata = row_images(row, ctx), ctx.source, self.extra_fields(row)
        if "messages" in row:
            messages = as_messages(get("messages"), "messages")
            if not any(m["role"] == "assistant" for m in messages):
                raise RecordProblem(MISSING_FIELD, "messages", "'messages' has no assistant turn to learn",
                                    "add the assistant's answer to the conversation")
            return SFTRecord(messages=messages, images=images, source=source, metadata=metadata)
        field = "completion" if "completion" in row else "response"
        prompt, completion = as_prompt(get("prompt"), "prompt"), get(field)
        if isinstance(completion, (list, tuple)):  # conversational prompt-completion
            turns = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            return SFTRecord(messages=[*turns, *as_messages(completion, field)],
                             images=images, source=source, metadata=metadata)
        return SFTRecord(prompt=prompt, response=as_text(completion, field),
                         images=images, source=source, metadata=metadata)


class PromptAdapter(Adapter):
    name = "prompts"
    kind = "prompt"
    description = "prompt-only records (prompt or question, + e.g. category)"
    consumed = frozenset({"prompt", "question", "image", "images"})

    signatures = (frozenset({"prompt"}), frozenset({"question"}))

    def convert(self, row: dict[str, Any], ctx: RowContext) -> PromptRecord:
        field = "prompt" if "prompt" in row else "question"
        return PromptRecord(
            prompt=as_prompt(row.get(field), field),
            images=row_images(row, ctx),
            source=ctx.source,
            metadata=self.extra_fields(row),
        )
