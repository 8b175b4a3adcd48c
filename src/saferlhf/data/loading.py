"""The entry points: ``load_records`` and one reader per record type, for any source.

``load_records`` gives each format's own records; ``load_pairs``, ``load_guard_records``,
``load_prompts`` and ``load_sft`` give one record type, converting through the views where
the format holds another (e.g. guard examples from preference pairs); ``load_mixture`` mixes
several sources (``saferlhf.data.mixing``). A source is a .jsonl/.json/.parquet path, a hub id,
a ``datasets.Dataset``, a list of dicts, or a ``beavertails-v:`` spec (the category configs of
BeaverTails-V merged, :mod:`saferlhf.data.beavertails_v`). Reading one plain source is
:mod:`saferlhf.data.adapters.loading`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from saferlhf.data.adapters.loading import (
    LoadResult,
    as_guard_records,
    as_pairs,
    as_prompts,
    as_sft,
    read_records,
)
from saferlhf.data.beavertails_v import is_beavertails_v_spec, load_beavertails_v_spec
from saferlhf.data.mixing import MixSource, mix, parse_mix_spec
from saferlhf.data.schema import GuardRecord, PreferencePair, PromptRecord, Record, SFTRecord


def load_records(source: Any, **options: Any) -> LoadResult[Record]:
    """Load ``source`` into the canonical records of its format.

    source: a .jsonl/.json/.parquet path, a hub id, a ``datasets.Dataset``, a list of dicts, or a
        ``beavertails-v:`` spec. The options (keywords; an unknown one is a ``TypeError``):
    format: ``"auto"``/``"world"`` (from the first record's fields), one of ``format_names()``
        or an alias (``pku``, ``trl``, ...).
    split, config, revision: for hub ids (``datasets.load_dataset``); pin ``revision``.
    column_map: canonical field -> the source's column, e.g. ``{"prompt": "question"}``.
    image_root: where relative image paths are resolved (default: the data file's folder).
    on_bad_record: ``"skip"`` (report and go on) or ``"error"`` (raise ``DataError``).
    limit: read at most this many rows of the source (bad ones included).
    verify_images: open every image once to check it (``Image.verify``).
    keep_contradictory_labels: keep pairs whose safer response is the one labelled unsafe
        (reported as warnings instead of bad records), e.g. to study label noise.
    chosen_is: for chosen/rejected data, what ``chosen`` wins on: better | safer | both.

    ``beavertails-v:SOURCE?categories=a+b&per_category=N&...`` merges BeaverTails-V's category
    configs with category-balanced sampling (``saferlhf.data.beavertails_v``).
    """
    if is_beavertails_v_spec(source):
        return load_beavertails_v_spec(source, **options)
    return read_records(source, **options)


def load_pairs(source: Any, **options: Any) -> LoadResult[PreferencePair]:
    """Preference pairs from a pair format (PKU-SafeRLHF, BeaverTails-V pairs, chosen/rejected).

    Options as for ``load_records``.
    """
    return as_pairs(load_records(source, **options))


def load_guard_records(source: Any, **options: Any) -> LoadResult[GuardRecord]:
    """Moderation examples: single labelled responses, or each labelled response of a pair."""
    return as_guard_records(load_records(source, **options))


def load_prompts(source: Any, *, dedup: bool = True, **options: Any) -> LoadResult[PromptRecord]:
    """Prompts from any format; ``dedup`` keeps each distinct prompt (+ images) once.

    Without ``dedup``, prompt-only data is returned row for row (other formats always go
    through ``prompt_view``, which merges repeated prompts).
    """
    return as_prompts(load_records(source, **options), dedup=dedup)


def load_sft(source: Any, *, policy: str = "better", only_safe: bool = True, **options: Any) -> LoadResult[SFTRecord]:
    """SFT demonstrations: SFT data as is, pairs through ``sft_view(policy)``, labelled single
    responses through ``sft_from_guard(only_safe)``."""
    return as_sft(load_records(source, **options), policy=policy, only_safe=only_safe)


def load_mixture(spec: str, *, seed: int, loader: Callable[..., Any] | None = None,
                 shuffle: bool = True, **load_options: Any) -> tuple[list[Any], list[Any]]:
    """Load every source of a mix spec with ``loader`` (default ``load_pairs``) and mix them.

    Returns the mixed records and each source's ``LoadReport``.
    """
    if loader is None:
        loader = load_pairs
    components = parse_mix_spec(spec)
    loaded = [loader(c.name, **load_options) for c in components]
    sources = [MixSource(c.name, result.records, c.amount) for c, result in zip(components, loaded, strict=True)]
    return mix(sources, seed=seed, shuffle=shuffle), [result.report for result in loaded]
