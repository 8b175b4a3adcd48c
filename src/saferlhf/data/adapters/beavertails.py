"""BeaverTails QA moderation (HF ``PKU-Alignment/BeaverTails``): one labelled response.

Fields: ``prompt``, ``response``, ``category`` (a dict of the 14 harm categories -> bool),
``is_safe``. Each row becomes a ``GuardRecord``. BeaverTails does not grade severity, so it
is ``None``; a ``severity_level`` field (0..3), where a derived file has one, is read too.
"""

from __future__ import annotations

from typing import Any

from saferlhf.data.adapters.base import Adapter, RowContext, warn_unknown_categories
from saferlhf.data.schema import BEAVERTAILS_CATEGORIES, GuardRecord
from saferlhf.data.validation import (
    as_bool,
    as_prompt,
    as_text,
    optional_severity,
    true_names,
)

_KNOWN_CATEGORIES = frozenset(BEAVERTAILS_CATEGORIES)


class BeaverTailsQAAdapter(Adapter):
    name = "beavertails"
    kind = "guard"
    description = "BeaverTails QA moderation (prompt, response, 14-category dict, is_safe)"
    consumed = frozenset({"prompt", "response", "category", "is_safe", "severity_level"})

    signatures = (frozenset({"prompt", "response", "is_safe"}),)

    def convert(self, row: dict[str, Any], ctx: RowContext) -> GuardRecord:
        get = row.get
        categories = true_names(get("category"), "category")
        unknown = categories - _KNOWN_CATEGORIES
        if unknown:
            warn_unknown_categories(ctx, "category", f"categories outside BeaverTails' 14: {sorted(unknown)}")
        return self.guard_record(
            row, ctx, check={"safe_name": "is_safe", "severity_name": "severity_level"},
            prompt=as_prompt(get("prompt"), "prompt"),
            safe=as_bool(get("is_safe"), "is_safe"),
            response=as_text(get("response"), "response"),
            severity=optional_severity(get("severity_level"), "severity_level"),
            categories=categories,
        )
