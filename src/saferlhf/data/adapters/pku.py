"""PKU-SafeRLHF (HF ``PKU-Alignment/PKU-SafeRLHF``) and data written in its schema.

Fields: ``prompt``, ``response_0``, ``response_1``, ``better_response_id`` and
``safer_response_id`` (0-BASED: 0 = response_0, 1 = response_1), ``is_response_{0,1}_safe``,
``response_{0,1}_severity_level`` (0..3), ``response_{0,1}_harm_category`` (a dict of the 19
harm categories -> bool). ``prompt_source``, ``*_source``, ``*_sha256`` and any other field
(e.g. the synthetic world's ``oracle_helpfulness_{0,1}`` / ``oracle_harm_{0,1}``) are kept in
the metadata.

The single-dimension and partial variants lack some labels: a missing optional label becomes
``None`` (or no categories), never an error. Only the prompt and both responses are required.
The project's own image-text data may add ``image`` (one) or ``images`` (a list).
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
from saferlhf.data.adapters.images import row_images
from saferlhf.data.schema import PKU_HARM_CATEGORIES, PreferencePair
from saferlhf.data.validation import (
    as_prompt,
    optional_bool,
    optional_severity,
    true_names,
)

_KNOWN_CATEGORIES = frozenset(PKU_HARM_CATEGORIES)
_RESPONSES = ("response_0", "response_1")
_ID_FIX = (
    "PKU-SafeRLHF ids are 0-based: use 0 for response_0 or 1 for response_1 (a file with "
    "1-based ids \"1\"/\"2\" and response_1/response_2 is in the BeaverTails-V schema: "
    "format='beavertails_v')"
)

# Raw names of the checked fields, so messages about identical responses or contradictory
# labels name the fields as they appear in the file.
FIELD_NAMES = pair_field_names(_RESPONSES, ("is_response_0_safe", "is_response_1_safe"),
                               ("response_0_severity_level", "response_1_severity_level"))


class PKUSafeRLHFAdapter(Adapter):
    name = "pku_saferlhf"
    kind = "pair"
    description = "PKU-SafeRLHF dual-preference pairs (0-based ids)"
    consumed = frozenset({
        "prompt", "response_0", "response_1", "better_response_id", "safer_response_id",
        "is_response_0_safe", "is_response_1_safe",
        "response_0_severity_level", "response_1_severity_level",
        "response_0_harm_category", "response_1_harm_category", "image", "images",
    })

    signatures = (frozenset({"response_0", "response_1"}),)

    def convert(self, row: dict[str, Any], ctx: RowContext) -> PreferencePair:
        get = row.get
        categories_a = self._categories(get("response_0_harm_category"), "response_0_harm_category", ctx)
        categories_b = self._categories(get("response_1_harm_category"), "response_1_harm_category", ctx)
        return self.pair(
            row, ctx, FIELD_NAMES,
            prompt=as_prompt(get("prompt"), "prompt"),
            **responses_and_ids(row, _RESPONSES, better="better_response_id", safer="safer_response_id",
                                first_id=0, fix=_ID_FIX),
            safe_a=optional_bool(get("is_response_0_safe"), "is_response_0_safe"),
            safe_b=optional_bool(get("is_response_1_safe"), "is_response_1_safe"),
            severity_a=optional_severity(get("response_0_severity_level"), "response_0_severity_level"),
            severity_b=optional_severity(get("response_1_severity_level"), "response_1_severity_level"),
            categories_a=categories_a,
            categories_b=categories_b,
            images=row_images(row, ctx),
        )

    @staticmethod
    def _categories(value: Any, field: str, ctx: RowContext) -> frozenset[str]:
        names = true_names(value, field)
        unknown = names - _KNOWN_CATEGORIES
        if unknown:
            warn_unknown_categories(ctx, field, f"'{field}' has categories outside the 19 of PKU-SafeRLHF: "
                                    f"{sorted(unknown)}")
        return names


def to_pku_record(pair: PreferencePair) -> dict[str, Any]:
    """A canonical pair written back in the PKU-SafeRLHF schema (metadata fields included).

    The inverse of the adapter for text pairs: ``to_pku_record`` then loading gives the same
    pair back (apart from ``source``). Harm categories are written as the full dict of the 19
    categories (plus any unknown name the pair carries).
    """
    record: dict[str, Any] = {
        "prompt": pair.prompt,
        "response_0": pair.response_a,
        "response_1": pair.response_b,
    }
    record.update(pair.metadata)
    if pair.images:
        record["images"] = list(pair.images)
    for i, side in enumerate(("a", "b")):
        record[f"is_response_{i}_safe"] = pair.is_safe(side)
        record[f"response_{i}_severity_level"] = pair.severity(side)
        categories = pair.categories(side)
        flags = {name: name in categories for name in PKU_HARM_CATEGORIES}
        flags.update((name, True) for name in sorted(categories - _KNOWN_CATEGORIES))
        record[f"response_{i}_harm_category"] = flags
    record["better_response_id"] = None if pair.better is None else "ab".index(pair.better)
    record["safer_response_id"] = None if pair.safer is None else "ab".index(pair.safer)
    return record
