"""What every dataset adapter is: a detector and a converter from one raw row to one record.

An adapter never reads files (``reading`` does) and never decides what happens to a bad
record (``loading`` does, by policy): it turns one raw ``dict`` into one canonical record or
raises a ``RecordProblem`` saying what is wrong and how to fix it. Warnings (the record is
kept) go through ``RowContext.warn``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any, ClassVar, Literal

from saferlhf.data.schema import GuardRecord, PreferencePair, Record
from saferlhf.data.validation import (
    UNKNOWN_CATEGORY,
    RecordProblem,
    as_text,
    check_guard,
    check_pair,
    optional_choice,
)

RecordKind = Literal["pair", "guard", "sft", "prompt"]


class RowContext:
    """Per-load state an adapter may need while converting a row.

    One instance serves a whole load; the loader updates ``source`` for each row, so the
    per-row cost is an attribute assignment.
    """

    __slots__ = ("chosen_is", "image_root", "keep_contradictory", "source", "verify_images", "warnings")

    def __init__(
        self, *, image_root: Path | None = None, verify_images: bool = True,
        keep_contradictory: bool = False, chosen_is: str = "better",
    ):
        self.source = ""
        self.image_root = image_root
        self.verify_images = verify_images
        self.keep_contradictory = keep_contradictory  # contradictory labels: warning, not bad record
        self.chosen_is = chosen_is  # what "chosen" wins on in chosen/rejected data
        self.warnings: list[RecordProblem] = []

    def warn(self, problem: RecordProblem) -> None:
        """Report a finding that does not make the record bad (it is kept)."""
        self.warnings.append(problem)


class Adapter(ABC):
    """Base class: subclasses set ``name``, ``kind``, ``consumed``, ``signatures`` and implement
    ``convert``.

    ``consumed`` lists the raw fields turned into typed record fields; every other field of
    the row is kept in ``record.metadata``. ``signatures``: a row is in this format when it has
    every field of one of these sets.
    """

    name: ClassVar[str]
    kind: ClassVar[RecordKind]
    description: ClassVar[str]
    consumed: ClassVar[frozenset[str]] = frozenset()
    signatures: ClassVar[tuple[frozenset[str], ...]] = ()

    def matches(self, fields: AbstractSet[str]) -> bool:
        """Whether a row with these field names is in this adapter's format."""
        return any(all(f in fields for f in signature) for signature in self.signatures)

    @abstractmethod
    def convert(self, row: dict[str, Any], ctx: RowContext) -> Record:
        """One raw row -> one canonical record; raises ``RecordProblem`` for a bad row."""

    def extra_fields(self, row: dict[str, Any]) -> dict[str, Any]:
        """The row's fields this adapter does not consume: they become the record's metadata."""
        consumed = self.consumed
        return {key: value for key, value in row.items() if key not in consumed}

    def pair(self, row: dict[str, Any], ctx: RowContext, field_names: dict[str, str], **fields: Any) -> PreferencePair:
        """A pair of the converted ``fields`` with the row's source and metadata, checked by
        ``check_pair`` (``field_names``: the source's names of the canonical fields)."""
        pair = PreferencePair(**fields, source=ctx.source, metadata=self.extra_fields(row))
        check_pair(pair, ctx.warn, field_names, keep_contradictory=ctx.keep_contradictory)
        return pair

    def guard_record(self, row: dict[str, Any], ctx: RowContext, *, check: dict[str, str] | None = None,
                     **fields: Any) -> GuardRecord:
        """A guard record of the converted ``fields`` with the row's source and metadata;
        ``check``: the ``check_guard`` field names (``safe_name``, ``severity_name``) to run it."""
        record = GuardRecord(**fields, source=ctx.source, metadata=self.extra_fields(row))
        if check is not None:
            check_guard(record, ctx.warn, **check)
        return record

    def __repr__(self) -> str:
        return f"<adapter {self.name} ({self.kind})>"


def warn_unknown_categories(ctx: RowContext, field: str, message: str, *, several: bool = True) -> None:
    """Warn that ``field`` names categories outside the dataset's taxonomy (they are kept)."""
    kept = "they are kept" if several else "it is kept"
    ctx.warn(RecordProblem(UNKNOWN_CATEGORY, field, message,
                           f"nothing to do if intended ({kept}); else fix the spelling"))


def responses_and_ids(row: dict[str, Any], names: tuple[str, str], *, better: str, safer: str, first_id: int,
                      fix: str) -> dict[str, Any]:
    """``response_a``, ``response_b``, ``better`` and ``safer`` of a pair stored as two response
    columns ``names`` and two id columns (ids counted from ``first_id``; ``fix`` for a bad id)."""
    get = row.get
    return {
        "response_a": as_text(get(names[0]), names[0]),
        "response_b": as_text(get(names[1]), names[1]),
        "better": optional_choice(get(better), better, first_id=first_id, names=names, fix=fix),
        "safer": optional_choice(get(safer), safer, first_id=first_id, names=names, fix=fix),
    }


def pair_field_names(responses: tuple[str, str], safe: tuple[str, str], severity: tuple[str, str],
                     safer: str = "safer_response_id") -> dict[str, str]:
    """The source's names of a pair's checked fields (``check_pair`` messages name the fields as
    they appear in the file): ``responses``, per-response ``safe`` flags and ``severity``."""
    return {"response_a": responses[0], "response_b": responses[1], "safer": safer,
            "safe_a": safe[0], "safe_b": safe[1], "severity_a": severity[0], "severity_b": severity[1]}
