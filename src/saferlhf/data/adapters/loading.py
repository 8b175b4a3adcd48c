"""Reading one source: convert each row with its adapter, apply the bad-record policy.

``read_records`` gives each format's own records from a file, hub id, ``datasets.Dataset`` or
list of dicts; ``as_pairs``, ``as_guard_records``, ``as_prompts`` and ``as_sft`` give one record
type, converting through the views where the format holds another (e.g. guard examples from
preference pairs). The public entry points (``saferlhf.data.load_records``, ``load_pairs`` …,
which also read ``beavertails-v:`` specs) are in :mod:`saferlhf.data.loading`.

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


def read_records(
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
    """The records of one source in its format's own record type (arguments: see
    :func:`saferlhf.data.loading.load_records`; no ``beavertails-v:`` specs here)."""
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


def as_pairs(result: LoadResult) -> LoadResult[PreferencePair]:
    """``result`` if it holds preference pairs, else a ``DataError`` naming the readers to use."""
    _require_kind(result, ("pair",), "load_pairs",
                  "single responses can be read with load_guard_records or load_sft")
    return result  # type: ignore[return-value]


def as_guard_records(result: LoadResult) -> LoadResult[GuardRecord]:
    """Moderation examples: single labelled responses, or each labelled response of a pair."""
    kind = _kind(result)
    if kind == "pair":
        return LoadResult(guard_view(result.records), result.report)
    _require_kind(result, ("guard",), "load_guard_records",
                  "guard examples need per-response safety labels")
    return result  # type: ignore[return-value]


def as_prompts(result: LoadResult, *, dedup: bool = True) -> LoadResult[PromptRecord]:
    """Prompts from any format; ``dedup`` keeps each distinct prompt (+ images) once."""
    if _kind(result) == "prompt" and not dedup:
        return result  # type: ignore[return-value]
    return LoadResult(prompt_view(result.records), result.report)


def as_sft(result: LoadResult, *, policy: str = "better", only_safe: bool = True) -> LoadResult[SFTRecord]:
    """SFT demonstrations: SFT data as is, pairs through ``sft_view(policy)``, labelled single
    responses through ``sft_from_guard(only_safe)``."""
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
