"""The entry points: read a source, convert each row with its adapter, apply the bad-record policy.

``load_records`` gives each format's own records; ``load_pairs``, ``load_guard_records``,
``load_prompts`` and ``load_sft`` give one record type, converting through the views where
the format holds another (e.g. guard examples from preference pairs).

Every load returns a ``LoadResult``: the records and a ``LoadReport`` in which every row of
the source is either loaded or listed as skipped with its reason, so
``report.loaded + len(report.skipped) == report.total``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from saferlhf.data.adapters import ADAPTERS, detect_format, format_names, get_adapter
from saferlhf.data.adapters.base import Adapter, RowContext
from saferlhf.data.adapters.generic import CHOSEN_IS
from saferlhf.data.adapters.reading import RawSource, open_source
from saferlhf.data.schema import GuardRecord, PreferencePair, PromptRecord, Record, SFTRecord
from saferlhf.data.validation import (
    BadRecord,
    DataError,
    LoadReport,
    RecordProblem,
    check_policy,
    enforce_bad_fraction,
)
from saferlhf.data.views import guard_view, prompt_view, sft_from_guard, sft_view

R = TypeVar("R")


@dataclass
class LoadResult(Generic[R]):
    """Records of one load and the report of what was read, kept and skipped."""

    records: list[R]
    report: LoadReport

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[R]:
        return iter(self.records)

    def __getitem__(self, index: int) -> R:
        return self.records[index]


def load_records(
    source: Any,
    *,
    format: str = "auto",
    split: str | None = None,
    config: str | None = None,
    revision: str | None = None,
    column_map: Mapping[str, str] | None = None,
    image_root: str | Path | None = None,
    on_bad_record: str = "skip",
    limit: int | None = None,
    verify_images: bool = True,
    keep_contradictory_labels: bool = False,
    chosen_is: str = "better",
) -> LoadResult[Record]:
    """Load ``source`` into the canonical records of its format.

    source: a .jsonl/.json/.parquet path, a hub id, a ``datasets.Dataset`` or a list of dicts.
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
    if isinstance(source, str) and source.startswith("beavertails-v:"):
        from saferlhf.data.beavertails_v import load_beavertails_v_spec

        return load_beavertails_v_spec(
            source, format=format, split=split, config=config, revision=revision, column_map=column_map,
            image_root=image_root, on_bad_record=on_bad_record, limit=limit, verify_images=verify_images,
            keep_contradictory_labels=keep_contradictory_labels, chosen_is=chosen_is)
    check_policy(on_bad_record)
    if chosen_is not in CHOSEN_IS:
        raise ValueError(f"chosen_is must be one of {CHOSEN_IS}, got {chosen_is!r}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    raw = open_source(source, split=split, config=config, revision=revision)
    adapter = get_adapter(format)  # None: detect from the first record
    rename = _renamer(column_map)
    root = Path(image_root) if image_root is not None else raw.directory
    ctx = RowContext(image_root=root, verify_images=verify_images, keep_contradictory=keep_contradictory_labels,
                     chosen_is=chosen_is)
    report = LoadReport(source=raw.label, format=adapter.name if adapter else None)
    records: list[Record] = []
    append = records.append
    label = raw.label

    for position, row in raw.rows:
        if limit is not None and report.total >= limit:
            break
        report.total += 1
        if isinstance(row, RecordProblem):
            _bad(raw, position, row, report, on_bad_record, column_map)
            continue
        if rename is not None:
            row = rename(row)
        if adapter is None:
            adapter = _detect(row, raw)
            report.format = adapter.name
        ctx.source = f"{label}:{position}"
        try:
            record = adapter.convert(row, ctx)
        except RecordProblem as problem:
            ctx.warnings.clear()
            _bad(raw, position, problem, report, on_bad_record, column_map)
            continue
        if ctx.warnings:
            report.warnings.extend(_placed(raw, position, w, column_map) for w in ctx.warnings)
            ctx.warnings.clear()
        append(record)

    report.loaded = len(records)
    report.log()
    enforce_bad_fraction(report)
    return LoadResult(records, report)


def load_pairs(source: Any, **options: Any) -> LoadResult[PreferencePair]:
    """Preference pairs from a pair format (PKU-SafeRLHF, BeaverTails-V pairs, chosen/rejected).

    Options as for ``load_records``.
    """
    result = load_records(source, **options)
    _require_kind(result, ("pair",), "load_pairs",
                  "single responses can be read with load_guard_records or load_sft")
    return result  # type: ignore[return-value]


def load_guard_records(source: Any, **options: Any) -> LoadResult[GuardRecord]:
    """Moderation examples: single labelled responses, or each labelled response of a pair."""
    result = load_records(source, **options)
    kind = _kind(result)
    if kind == "pair":
        return LoadResult(guard_view(result.records), result.report)
    _require_kind(result, ("guard",), "load_guard_records",
                  "guard examples need per-response safety labels")
    return result  # type: ignore[return-value]


def load_prompts(source: Any, *, dedup: bool = True, **options: Any) -> LoadResult[PromptRecord]:
    """Prompts from any format; ``dedup`` keeps each distinct prompt (+ images) once.

    Without ``dedup``, prompt-only data is returned row for row (other formats always go
    through ``prompt_view``, which merges repeated prompts).
    """
    result = load_records(source, **options)
    if _kind(result) == "prompt" and not dedup:
        return result  # type: ignore[return-value]
    return LoadResult(prompt_view(result.records), result.report)


def load_sft(source: Any, *, policy: str = "better", only_safe: bool = True, **options: Any) -> LoadResult[SFTRecord]:
    """SFT demonstrations: SFT data as is, pairs through ``sft_view(policy)``, labelled single
    responses through ``sft_from_guard(only_safe)``."""
    result = load_records(source, **options)
    kind = _kind(result)
    if kind == "pair":
        return LoadResult(sft_view(result.records, policy), result.report)
    if kind == "guard":
        return LoadResult(sft_from_guard(result.records, only_safe=only_safe), result.report)
    _require_kind(result, ("sft",), "load_sft", "prompt-only data has no responses to imitate")
    return result  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------


def _kind(result: LoadResult) -> str | None:
    return get_adapter(result.report.format).kind if result.report.format else None


def _require_kind(result: LoadResult, kinds: tuple[str, ...], function: str, hint: str) -> None:
    kind = _kind(result)
    if kind is not None and kind not in kinds:
        readable = [adapter.name for adapter in ADAPTERS if adapter.kind in kinds]
        raise DataError(f"{result.report.source} is in the {result.report.format!r} format, which "
                        f"{function} cannot use ({hint}); {function} reads {readable}")


def _renamer(column_map: Mapping[str, str] | None):
    """A function giving a row with its source columns renamed to canonical names, or None.

    Rows are copied, not renamed in place: in-memory sources belong to the caller.
    """
    if not column_map:
        return None
    for canonical, column in column_map.items():
        if not (isinstance(canonical, str) and isinstance(column, str)):
            raise TypeError(f"column_map must map field names to column names, got {column_map!r}")
    canonical_of = {column: canonical for canonical, column in column_map.items()}

    def rename(row: dict[str, Any]) -> dict[str, Any]:
        return {canonical_of.get(key, key): value for key, value in row.items()}

    return rename


def _detect(row: dict[str, Any], raw: RawSource) -> Adapter:
    adapter = detect_format(row.keys())
    if adapter is None:
        raise DataError(
            f"cannot tell the format of {raw.label} from the fields of its first record "
            f"{sorted(row)}; pass format= (one of {format_names()}) or a column_map= "
            "naming its prompt/response columns"
        )
    return adapter


def _placed(raw: RawSource, position: int, problem: RecordProblem, column_map: Mapping[str, str] | None) -> BadRecord:
    field = problem.field
    if field and column_map and field in column_map and column_map[field] != field:
        field = f"{column_map[field]} (mapped to '{field}')"
    return BadRecord(
        location=f"{raw.label}:{position}", where=raw.where(position), reason=problem.reason,
        field=field, message=problem.message, fix=problem.fix,
    )


def _bad(raw: RawSource, position: int, problem: RecordProblem, report: LoadReport, policy: str,
         column_map: Mapping[str, str] | None) -> None:
    bad = _placed(raw, position, problem, column_map)
    if policy == "error":
        raise DataError(str(bad), bad)
    report.skipped.append(bad)
