"""Dual-preference data: canonical records, dataset adapters, validation, views and mixing.

Typical use::

    from saferlhf.data import load_pairs
    result = load_pairs("pairs_train.jsonl")            # or a hub id, a parquet file, ...
    pairs, report = result.records, result.report       # report: loaded/skipped/warnings

See DESIGN §3. ``saferlhf.data.templates`` (prompt templates) is imported on its own.
"""

from saferlhf.data.adapters import ADAPTERS, detect_format, format_names, get_adapter, to_pku_record
from saferlhf.data.beavertails_v import (
    BEAVERTAILS_V_REVISION,
    MergedLoadReport,
    load_beavertails_v,
    load_beavertails_v_spec,
)
from saferlhf.data.loading import (
    LoadResult,
    load_guard_records,
    load_mixture,
    load_pairs,
    load_prompts,
    load_records,
    load_sft,
)
from saferlhf.data.mixing import MixComponent, MixSource, mix, parse_mix_spec
from saferlhf.data.schema import (
    BEAVERTAILS_CATEGORIES,
    BEAVERTAILS_V_CATEGORIES,
    PKU_HARM_CATEGORIES,
    SEVERITY_LEVELS,
    GuardRecord,
    PreferencePair,
    PromptRecord,
    SFTRecord,
    open_image,
)
from saferlhf.data.validation import BadRecord, DataError, LoadReport
from saferlhf.data.views import guard_view, prompt_view, sft_from_guard, sft_view

__all__ = [
    "ADAPTERS",
    "BEAVERTAILS_CATEGORIES",
    "BEAVERTAILS_V_CATEGORIES",
    "BEAVERTAILS_V_REVISION",
    "PKU_HARM_CATEGORIES",
    "SEVERITY_LEVELS",
    "BadRecord",
    "DataError",
    "GuardRecord",
    "LoadReport",
    "LoadResult",
    "MergedLoadReport",
    "MixComponent",
    "MixSource",
    "PreferencePair",
    "PromptRecord",
    "SFTRecord",
    "detect_format",
    "format_names",
    "get_adapter",
    "guard_view",
    "load_beavertails_v",
    "load_beavertails_v_spec",
    "load_guard_records",
    "load_mixture",
    "load_pairs",
    "load_prompts",
    "load_records",
    "load_sft",
    "mix",
    "open_image",
    "parse_mix_spec",
    "prompt_view",
    "sft_from_guard",
    "sft_view",
    "to_pku_record",
]
