"""BeaverTails-V (image + question; HF ``PKU-Alignment/BeaverTails-V``, one config per category).

Pair schema: ``question``, ``image``, ``category`` (one of 20 secondary categories),
``image_severity``, ``response_1``, ``response_2``, ``more_helpful_response_id`` and
``safer_response_id`` as strings "1"/"2" (1-BASED: "1" = response_1, "2" = response_2),
``is_response_{1,2}_safe`` as "yes"/"no", ``response_{1,2}_harmless_rate`` (−3..+3),
``response_{1,2}_helpful_rate``.

Single-response schema: ``question``, ``image``, ``category``, ``image_severity``,
``response``, ``is_response_safe`` -> a ``GuardRecord`` (and, through the views, SFT data).

The dataset labels one harm category per question, not per response: an unsafe response is
taken to show the question's category, a safe one none. There is no per-response severity
(``image_severity`` grades the image; it stays in the metadata with ``category``).
"""

from __future__ import annotations

from typing import Any

from saferlhf.data.adapters.base import (
    Adapter,
    RowContext,
    pair_field_names,
    responses_and_ids,
    warn_unknown_categories,
)
from saferlhf.data.adapters.images import resolve_image
from saferlhf.data.schema import BEAVERTAILS_V_CATEGORIES, GuardRecord, PreferencePair
from saferlhf.data.validation import (
    ILL_TYPED,
    RATING_OUT_OF_RANGE,
    RecordProblem,
    as_bool,
    as_text,
    is_missing,
    optional_bool,
    optional_number,
)

_KNOWN_CATEGORIES = frozenset(BEAVERTAILS_V_CATEGORIES)
_RESPONSES = ("response_1", "response_2")
_ID_FIX = (
    "BeaverTails-V ids are 1-based: use \"1\" for response_1 or \"2\" for response_2 (a file "
    "with 0-based ids and response_0/response_1 is in the PKU-SafeRLHF schema: format='pku_saferlhf')"
)
FIELD_NAMES = pair_field_names(_RESPONSES, ("is_response_1_safe", "is_response_2_safe"), ("severity", "severity"))


def _category(row: dict[str, Any], ctx: RowContext) -> str | None:
    """The question's category; an unknown name is kept with a warning."""
    category = row.get("category")
    if is_missing(category):
        return None
    if not isinstance(category, str):
        raise RecordProblem(ILL_TYPED, "category", f"'category' = {category!r:.80} is not a string",
                            "make 'category' a category name")
    if category not in _KNOWN_CATEGORIES:
        warn_unknown_categories(ctx, "category", f"category {category!r} is not one of BeaverTails-V's 20",
                                several=False)
    return category


def _harm(safe: bool | None, category: str | None) -> frozenset[str]:
    return frozenset((category,)) if safe is False and category else frozenset()


def _harmless_rate(row: dict[str, Any], field: str, ctx: RowContext) -> float | None:
    rate = optional_number(row.get(field), field)
    if rate is not None and not -3 <= rate <= 3:
        ctx.warn(RecordProblem(RATING_OUT_OF_RANGE, field, f"'{field}' = {rate} is outside −3..+3",
                               "check the rating scale of this file"))
    return rate


class BeaverTailsVPairAdapter(Adapter):
    name = "beavertails_v"
    kind = "pair"
    description = "BeaverTails-V image+question preference pairs (1-based string ids)"
    consumed = frozenset({
        "question", "image", "response_1", "response_2", "more_helpful_response_id",
        "safer_response_id", "is_response_1_safe", "is_response_2_safe",
        "response_1_harmless_rate", "response_2_harmless_rate",
        "response_1_helpful_rate", "response_2_helpful_rate",
    })

    signatures = (frozenset({"question", "response_1", "response_2"}),)

    def convert(self, row: dict[str, Any], ctx: RowContext) -> PreferencePair:
        get = row.get
        category = _category(row, ctx)
        safe_a = optional_bool(get("is_response_1_safe"), "is_response_1_safe")
        safe_b = optional_bool(get("is_response_2_safe"), "is_response_2_safe")
        return self.pair(
            row, ctx, FIELD_NAMES,
            prompt=as_text(get("question"), "question"),
            **responses_and_ids(row, _RESPONSES, better="more_helpful_response_id", safer="safer_response_id",
                                first_id=1, fix=_ID_FIX),
            safe_a=safe_a,
            safe_b=safe_b,
            categories_a=_harm(safe_a, category),
            categories_b=_harm(safe_b, category),
            harmless_rate_a=_harmless_rate(row, "response_1_harmless_rate", ctx),
            harmless_rate_b=_harmless_rate(row, "response_2_harmless_rate", ctx),
            helpful_rate_a=optional_number(get("response_1_helpful_rate"), "response_1_helpful_rate"),
            helpful_rate_b=optional_number(get("response_2_helpful_rate"), "response_2_helpful_rate"),
            images=(resolve_image(get("image"), "image", ctx),),
        )


class BeaverTailsVSingleAdapter(Adapter):
    name = "beavertails_v_single"
    kind = "guard"
    description = "BeaverTails-V image+question with one labelled response"
    consumed = frozenset({"question", "image", "response", "is_response_safe"})

    signatures = (frozenset({"question", "response"}),)

    def convert(self, row: dict[str, Any], ctx: RowContext) -> GuardRecord:
        get = row.get
        category = _category(row, ctx)
        safe = as_bool(get("is_response_safe"), "is_response_safe")
        return self.guard_record(
            row, ctx,
            prompt=as_text(get("question"), "question"),
            safe=safe,
            response=as_text(get("response"), "response"),
            categories=_harm(safe, category),
            images=(resolve_image(get("image"), "image", ctx),),
        )
