"""Bad-record policy, the load report, and the checks and coercions adapters share (DESIGN §3.2).

A record with a missing or ill-typed field, identical responses, an id outside its range or
contradictory labels is a *bad record*. Depending on ``on_bad_record`` it is

* ``"skip"`` (default): left out of the result and listed in the ``LoadReport`` with its
  source, line/row, field and the fix; a count per reason is logged when the load ends;
* ``"error"``: the load stops with a ``DataError`` naming file, line, field and fix.

Nothing is dropped silently: ``report.loaded + len(report.skipped) == report.total``.
Some findings are only *warnings* (kept record, listed in ``report.warnings``): a safety flag
that disagrees with the severity/categories, an unknown category name, a rating out of range.

Adapters turn raw values into typed ones with the ``as_*`` coercers below; each raises a
``RecordProblem`` (reason, field, message, fix) that the loader places at the right line.
Accepted spellings are deliberately wide (string booleans, string ids, numpy scalars) since
the same data arrives through JSON, parquet and hub datasets with different types.
"""

from __future__ import annotations

import logging
import math
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from saferlhf.data.schema import Choice, GuardRecord, PreferencePair

log = logging.getLogger("saferlhf.data")

BAD_RECORD_POLICIES = ("skip", "error")

# Reasons a record is bad (skipped or fatal).
MALFORMED_JSON = "malformed_json"
NOT_AN_OBJECT = "not_an_object"
MISSING_FIELD = "missing_field"
ILL_TYPED = "ill_typed"
OUT_OF_RANGE = "out_of_range"
IDENTICAL_RESPONSES = "identical_responses"
CONTRADICTORY_LABELS = "contradictory_labels"
UNREADABLE_IMAGE = "unreadable_image"

# Reasons a record is kept with a warning.
SAFETY_SEVERITY_MISMATCH = "safety_severity_mismatch"
UNKNOWN_CATEGORY = "unknown_category"
RATING_OUT_OF_RANGE = "rating_out_of_range"


class DataError(ValueError):
    """A bad record under ``on_bad_record="error"``, or a source that cannot be read at all.

    ``problem`` is the ``BadRecord`` (``None`` for a source-level error).
    """

    def __init__(self, message: str, problem: BadRecord | None = None):
        super().__init__(message)
        self.problem = problem


class RecordProblem(Exception):
    """What is wrong with one raw record; raised by coercers and adapters, placed by the loader."""

    def __init__(self, reason: str, field: str | None, message: str, fix: str):
        super().__init__(message)
        self.reason = reason
        self.field = field
        self.message = message
        self.fix = fix


@dataclass(slots=True)
class BadRecord:
    """One reported record: where it is, which field, what is wrong, and how to fix it.

    ``location`` is ``"file.jsonl:12"`` (1-based line) or ``"dataset:12"`` (0-based row);
    ``where`` says the same in words.
    """

    location: str
    where: str
    reason: str
    field: str | None
    message: str
    fix: str

    def __str__(self) -> str:
        field_part = f", field '{self.field}'" if self.field else ""
        return f"{self.where}{field_part}: {self.message}. Fix: {self.fix}"


@dataclass
class LoadReport:
    """What a load read, kept, skipped (with reasons) and warned about."""

    source: str
    format: str | None = None
    total: int = 0
    loaded: int = 0
    skipped: list[BadRecord] = field(default_factory=list)
    warnings: list[BadRecord] = field(default_factory=list)

    def skipped_by_reason(self) -> Counter[str]:
        return Counter(b.reason for b in self.skipped)

    def warnings_by_reason(self) -> Counter[str]:
        return Counter(w.reason for w in self.warnings)

    def summary(self) -> str:
        """One line: loaded/total, then skipped and warning counts per reason."""
        text = f"{self.source} [{self.format}]: loaded {self.loaded} of {self.total} records"
        if self.skipped:
            text += f"; skipped {len(self.skipped)} ({_counts(self.skipped_by_reason())})"
        if self.warnings:
            text += f"; {len(self.warnings)} warnings ({_counts(self.warnings_by_reason())})"
        return text

    def log(self, *, examples: int = 3) -> None:
        """Log the summary, and the first few skipped records and warnings in full."""
        level = logging.WARNING if self.skipped else logging.INFO
        log.log(level, self.summary())
        for bad in self.skipped[:examples]:
            log.warning("skipped %s", bad)
        for warning in self.warnings[:examples]:
            log.info("warning %s", warning)


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{reason}: {n}" for reason, n in counter.most_common())


def check_policy(on_bad_record: str) -> None:
    if on_bad_record not in BAD_RECORD_POLICIES:
        raise ValueError(f"on_bad_record must be one of {BAD_RECORD_POLICIES}, got {on_bad_record!r}")


# ---------------------------------------------------------------------------------------------
# Coercers: raw value -> typed value, or a RecordProblem
# ---------------------------------------------------------------------------------------------

_TRUE = frozenset({"true", "yes", "1", "y", "t"})
_FALSE = frozenset({"false", "no", "0", "n", "f"})


def _plain(value: Any) -> Any:
    """numpy scalars -> Python scalars (parquet/hub rows may carry them)."""
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        return value.item()
    return value


def is_missing(value: Any) -> bool:
    """``None``, an empty/whitespace string, or NaN (pandas' null) counts as a missing value."""
    return value is None or (isinstance(value, str) and not value.strip()) or (
        isinstance(value, float) and math.isnan(value))


def as_text(value: Any, field: str) -> str:
    """A required non-empty string."""
    if isinstance(value, str) and value.strip():
        return value
    if is_missing(value):
        raise RecordProblem(
            MISSING_FIELD, field, f"'{field}' is missing or empty", f"give '{field}' a non-empty text"
        )
    raise RecordProblem(
        ILL_TYPED, field, f"'{field}' is {type(value).__name__} {value!r:.80}, not a string",
        f"make '{field}' a string",
    )


def as_messages(value: Any, field: str) -> list[dict[str, Any]]:
    """A non-empty chat: a list of ``{"role": str, "content": ...}`` dicts."""
    if isinstance(value, (list, tuple)) and value:
        for i, message in enumerate(value):
            if not (isinstance(message, Mapping) and isinstance(message.get("role"), str)
                    and message.get("content") is not None):
                raise RecordProblem(
                    ILL_TYPED, field, f"'{field}'[{i}] is not a chat message: {message!r:.80}",
                    f"make every item of '{field}' an object with 'role' and 'content'",
                )
        return [dict(m) for m in value]
    if is_missing(value) or (isinstance(value, (list, tuple)) and not value):
        raise RecordProblem(
            MISSING_FIELD, field, f"'{field}' is missing or empty", f"give '{field}' at least one message"
        )
    raise RecordProblem(
        ILL_TYPED, field, f"'{field}' is {type(value).__name__}, not a list of chat messages",
        f"make '{field}' a list of {{'role', 'content'}} objects",
    )


def as_prompt(value: Any, field: str):
    """A prompt: a non-empty string, or a list of chat messages."""
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, (list, tuple)):
        return as_messages(value, field)
    return as_text(value, field)  # raises the right problem (missing / ill-typed)


def as_bool(value: Any, field: str) -> bool:
    """A boolean from bool, 0/1, numpy bool, or the strings true/false, yes/no, 1/0."""
    if value is True or value is False:
        return value
    value = _plain(value)
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    if is_missing(value):
        raise RecordProblem(MISSING_FIELD, field, f"'{field}' is missing", f"set '{field}' to true or false")
    raise RecordProblem(
        ILL_TYPED, field, f"'{field}' = {value!r:.80} is not a boolean",
        f"set '{field}' to true/false (\"yes\"/\"no\" and 1/0 are accepted too)",
    )


def optional_bool(value: Any, field: str) -> bool | None:
    return None if is_missing(value) else as_bool(value, field)


def as_int(value: Any, field: str) -> int:
    """An integer from int, numpy int, an integral float, or a numeric string ("2")."""
    if type(value) is int:
        return value
    value = _plain(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    if is_missing(value):
        raise RecordProblem(MISSING_FIELD, field, f"'{field}' is missing", f"give '{field}' an integer")
    raise RecordProblem(
        ILL_TYPED, field, f"'{field}' = {value!r:.80} is not an integer", f"make '{field}' an integer"
    )


def as_number(value: Any, field: str) -> float:
    """A real number from int/float/numpy/numeric string."""
    value = _plain(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise RecordProblem(
        ILL_TYPED, field, f"'{field}' = {value!r:.80} is not a number", f"make '{field}' a number"
    )


def optional_number(value: Any, field: str) -> float | None:
    return None if is_missing(value) else as_number(value, field)


def optional_severity(value: Any, field: str) -> int | None:
    """A severity level 0..3, or None when absent."""
    if is_missing(value):
        return None
    level = as_int(value, field)
    if not 0 <= level <= 3:
        raise RecordProblem(
            OUT_OF_RANGE, field, f"'{field}' = {level} is outside 0..3",
            f"set '{field}' to 0 (safe), 1 (minor), 2 (moderate) or 3 (severe)",
        )
    return level


def optional_choice(value: Any, field: str, *, first_id: int, names: tuple[str, str], fix: str) -> Choice | None:
    """A response id -> ``"a"``/``"b"``, or None when absent.

    ``first_id`` is 0 for 0-based schemas (PKU-SafeRLHF) and 1 for 1-based ones
    (BeaverTails-V); ``names`` are the two responses' field names for the message.
    """
    if is_missing(value):
        return None
    response_id = as_int(value, field)
    if response_id == first_id:
        return "a"
    if response_id == first_id + 1:
        return "b"
    raise RecordProblem(
        OUT_OF_RANGE, field,
        f"'{field}' = {response_id} is out of range: ids here are {first_id}-based "
        f"({first_id} = {names[0]}, {first_id + 1} = {names[1]})",
        fix,
    )


def true_names(value: Any, field: str) -> frozenset[str]:
    """Harm category names from a ``{name: bool}`` dict (the true ones) or a list of names."""
    if value is None:
        return frozenset()
    if isinstance(value, Mapping):
        names = []
        for name, flag in value.items():  # a plain loop: this runs 2x per pair, 19 flags each
            if flag is True or flag is not False and flag is not None and as_bool(flag, f"{field}.{name}"):
                names.append(name)
        return frozenset(names)
    if isinstance(value, (list, tuple, set, frozenset)) and all(isinstance(v, str) for v in value):
        return frozenset(value)
    raise RecordProblem(
        ILL_TYPED, field, f"'{field}' is {type(value).__name__}, not a {{category: bool}} object",
        f"make '{field}' an object mapping each harm category to true/false",
    )


# ---------------------------------------------------------------------------------------------
# Record-level checks
# ---------------------------------------------------------------------------------------------

Warn = Callable[[RecordProblem], None]

PAIR_FIELD_NAMES = {
    "response_a": "response_a", "response_b": "response_b", "safer": "safer",
    "safe_a": "safe_a", "safe_b": "safe_b", "severity_a": "severity_a", "severity_b": "severity_b",
}
"""Canonical names; adapters pass their raw field names so messages name the file's fields."""


def check_pair(
    pair: PreferencePair, warn: Warn, names: Mapping[str, str] = PAIR_FIELD_NAMES, *,
    keep_contradictory: bool = False,
) -> None:
    """Raise for identical responses or contradictory labels; warn on safety/severity mismatch.

    ``keep_contradictory`` downgrades contradictory labels to a warning, for data whose label
    noise is the object of study (the synthetic world's annotator noise flips each label
    independently, so dropping contradictions would silently clean part of the noise).
    """
    if pair.response_a.strip() == pair.response_b.strip():
        raise RecordProblem(
            IDENTICAL_RESPONSES, names["response_b"],
            f"'{names['response_a']}' and '{names['response_b']}' are identical",
            "a preference between identical responses teaches nothing: remove the record "
            "or replace one response",
        )
    if pair.safer is not None and pair.safe_a is not None and pair.safe_b is not None:
        chosen_safe = pair.safe_a if pair.safer == "a" else pair.safe_b
        other_safe = pair.safe_b if pair.safer == "a" else pair.safe_a
        if not chosen_safe and other_safe:
            chosen, other_one = ("a", "b") if pair.safer == "a" else ("b", "a")
            problem = RecordProblem(
                CONTRADICTORY_LABELS, names["safer"],
                f"'{names['safer']}' picks {names['response_' + chosen]}, labelled unsafe "
                f"('{names['safe_' + chosen]}' = false), while {names['response_' + other_one]} "
                f"is labelled safe ('{names['safe_' + other_one]}' = true)",
                f"re-check the labels: either '{names['safer']}' should pick "
                f"{names['response_' + other_one]}, or one of the safety flags is wrong",
            )
            if not keep_contradictory:
                raise problem
            warn(problem)
    for side in ("a", "b"):
        _check_safety_consistency(
            pair.is_safe(side), pair.severity(side), pair.categories(side), warn,
            names["safe_" + side], names["severity_" + side],
        )


def check_guard(record: GuardRecord, warn: Warn, *, safe_name: str = "safe", severity_name: str = "severity") -> None:
    """Warn when a guard record's safety flag disagrees with its severity/categories."""
    _check_safety_consistency(record.safe, record.severity, record.categories, warn, safe_name, severity_name)


def _check_safety_consistency(
    safe: bool | None, severity: int | None, categories: frozenset[str], warn: Warn,
    safe_name: str, severity_name: str,
) -> None:
    # A safe response has severity 0 and no harm category; an unsafe one has some harm. The
    # labels come from separate annotation passes, so disagreement is possible and is only
    # reported (the record is kept): which label is right cannot be decided here.
    if safe is None or (severity is None and not categories):
        return
    harmful = bool(categories) or (severity is not None and severity > 0)
    if safe and harmful:
        warn(RecordProblem(
            SAFETY_SEVERITY_MISMATCH, safe_name,
            f"'{safe_name}' = true but '{severity_name}' = {severity} / categories {sorted(categories)}",
            "check whether the response is safe (then severity 0, no categories) or not",
        ))
    elif not safe and not harmful and severity is not None:
        warn(RecordProblem(
            SAFETY_SEVERITY_MISMATCH, safe_name,
            f"'{safe_name}' = false but '{severity_name}' = 0 and no harm category is set",
            "check whether the response is unsafe (then give its severity and categories)",
        ))


# --------------------------------------------------------------------------- bad-record threshold

LABEL_NOISE_REASONS = frozenset({CONTRADICTORY_LABELS})
"""Skip reasons that are label noise, not malformed data: not counted by ``--max-bad-fraction``."""

_BAD_LIMIT: ContextVar[float | None] = ContextVar("saferlhf_max_bad_fraction", default=None)


@contextmanager
def bad_record_limit(fraction: float | None) -> Iterator[None]:
    """Within the block, every load stops with a DataError when more than ``fraction`` of a
    source's records are bad, and prints its kept / skipped counts (the CLI sets this from a
    stage's ``max_bad_fraction``; ``None``: no limit, nothing printed)."""
    token = _BAD_LIMIT.set(fraction)
    try:
        yield
    finally:
        _BAD_LIMIT.reset(token)


def enforce_bad_fraction(report: LoadReport, *, examples: int = 3) -> None:
    """Print the load's counts and raise DataError when its bad fraction is over the limit."""
    limit = _BAD_LIMIT.get()
    if limit is None:
        return
    print(f"data: {report.summary()}", file=sys.stderr)
    # Contradictory safety labels are annotator noise in well-formed records: skipped and
    # counted as always, but a noisy labelling (≈ 13 % of pairs at 15 % label noise) must not
    # stop a run the way a file of malformed lines should.
    malformed = [b for b in report.skipped if b.reason not in LABEL_NOISE_REASONS]
    if not report.total or not malformed:
        return
    fraction = len(malformed) / report.total
    if fraction > limit:
        first = "\n  ".join(str(b) for b in malformed[:examples])
        raise DataError(
            f"{report.source}: {len(malformed)} of {report.total} records are bad ({fraction:.0%}, over "
            f"--max-bad-fraction {limit:g}); nothing was trained. Reasons: {_counts(report.skipped_by_reason())}. "
            f"First bad records:\n  {first}\nRepair the file, pass the right --data-format, or raise "
            "--max-bad-fraction to train on the good records only")
