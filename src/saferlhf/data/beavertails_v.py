"""BeaverTails-V as one training set: its 20 category configs merged, sampled category-balanced.

``PKU-Alignment/BeaverTails-V`` ships one hub config per harm category (the config names are
the category strings of ``BEAVERTAILS_V_CATEGORIES``, e.g. ``animal_abuse``), each with a
``train`` and an ``evaluation`` split. :func:`load_beavertails_v` loads the chosen categories
through the ordinary adapters (``beavertails_v`` pairs for the reward model, which learns
from ``more_helpful_response_id``, and the cost model, which learns from
``safer_response_id`` with the binary or the graded −3..+3 ``harmless_rate`` sign term; or
``beavertails_v_single`` responses for the guard and SFT), merges them and samples the same
number of records from every category, deterministically in ``seed``::

    from saferlhf.data import load_beavertails_v
    result = load_beavertails_v(categories=["animal_abuse", "sexual_crimes"], per_category=500)
    pairs, report = result.records, result.report   # report.parts: one LoadReport per category

Sources: the hub id (each category read with ``config=<category>`` at the pinned
``revision``), or a local folder holding one file per category, found in this order::

    DIR/<category>/<split>.{jsonl,jsonl.gz,json,parquet}
    DIR/<category>/<split>-*.parquet                 (hub shards, read in name order)
    DIR/<split>/<category>.{jsonl,jsonl.gz,json,parquet}
    DIR/<category>.{jsonl,jsonl.gz,json,parquet}      (a folder holding one split)

The CLI stages read the same through a data spec (see :func:`load_beavertails_v_spec`)::

    --data "beavertails-v:PKU-Alignment/BeaverTails-V?per_category=500&seed=1"
    --data "beavertails-v:/data/bt-v?categories=animal_abuse+sexual_crimes"
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from saferlhf.data.adapters.loading import LoadResult, as_guard_records, as_pairs, read_records
from saferlhf.data.mixing import sample_indices
from saferlhf.data.schema import BEAVERTAILS_V_CATEGORIES
from saferlhf.data.validation import DataError, LoadReport

log = logging.getLogger("saferlhf.data")

BEAVERTAILS_V_HUB_ID = "PKU-Alignment/BeaverTails-V"

BEAVERTAILS_V_REVISION: str = "0000000000000000000000000000000000000000"
"""The hub revision (a 40-hex commit sha) of ``PKU-Alignment/BeaverTails-V`` that this code
reads by default, so that a recipe names exactly the data it trained on.

PLACEHOLDER: this code was written offline, against the dataset's published schema (20
category configs, ``train``/``evaluation`` splits), without access to the hub, so the commit
it was written against could not be looked up. The all-zero sha marks that: a hub load at
this revision stops with an error asking for a real one instead of silently reading whatever
``main`` holds today. Set it (here, or per call with ``revision=`` / ``?revision=`` in a data
spec) to the sha you verified, e.g. ``huggingface_hub.HfApi().dataset_info(
"PKU-Alignment/BeaverTails-V").sha``; pass ``revision="main"`` to read unpinned on purpose.
It MUST be updated whenever the dataset changes (new categories, relabelled records, new
splits), together with ``BEAVERTAILS_V_CATEGORIES``."""

BEAVERTAILS_V_SPEC_PREFIX = "beavertails-v:"
"""Prefix of a data spec string read by :func:`load_beavertails_v_spec`."""

BALANCE_MODES = ("equal", "none")
KINDS = ("pairs", "single")
_FORMAT_OF_KIND = {"pairs": "beavertails_v", "single": "beavertails_v_single"}
_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".parquet")
_PLACEHOLDER_REVISION = "0" * 40


@dataclass
class MergedLoadReport(LoadReport):
    """The report of a merged load: every category's own ``LoadReport`` in ``parts``.

    ``total``, ``loaded``, ``skipped`` and ``warnings`` add up the parts (so
    ``loaded + len(skipped) == total`` still holds: ``loaded`` counts the usable records
    *before* balancing); ``sampled`` gives the records taken from each category, and
    ``len(result.records) == sum(sampled.values())``. Each skipped record's ``location`` names
    its category file (or hub config) and line/row.
    """

    parts: dict[str, LoadReport] = field(default_factory=dict)
    sampled: dict[str, int] = field(default_factory=dict)
    balance: str = "equal"
    seed: int = 0

    def summary(self) -> str:
        text = super().summary()
        if self.sampled:
            counts = sorted(set(self.sampled.values()))
            per = counts[0] if len(counts) == 1 else f"{counts[0]}..{counts[-1]}"
            text += (f"; sampled {sum(self.sampled.values())} ({per} per category, "
                     f"{len(self.sampled)} categories, balance={self.balance}, seed={self.seed})")
        return text


def category_config(name: str) -> str:
    """The hub config (= canonical category string) of a category name.

    Case, spaces and hyphens are forgiven (``"Animal-Abuse"`` -> ``"animal_abuse"``); an
    unknown name is a ``ValueError`` listing the valid ones.
    """
    if not isinstance(name, str):
        raise TypeError(f"a BeaverTails-V category is a string, got {name!r}")
    config = "_".join(name.strip().lower().replace("-", " ").split())
    if config not in BEAVERTAILS_V_CATEGORIES:
        raise ValueError(f"unknown BeaverTails-V category {name!r}; the {len(BEAVERTAILS_V_CATEGORIES)} "
                         f"categories (= hub configs) are: {', '.join(BEAVERTAILS_V_CATEGORIES)}")
    return config


def load_beavertails_v(
    source: str | Path = BEAVERTAILS_V_HUB_ID,
    *,
    categories: Iterable[str] | str | None = None,
    split: str = "train",
    revision: str | None = BEAVERTAILS_V_REVISION,
    per_category: int | None = None,
    balance: str = "equal",
    seed: int = 0,
    kind: str = "pairs",
    shuffle: bool = True,
    **load_options: Any,
) -> LoadResult:
    """Load BeaverTails-V category by category, merge, and sample category-balanced.

    source: the hub id (default) or a local folder with one file per category (module doc).
    categories: category names (default: all 20 of ``BEAVERTAILS_V_CATEGORIES``); a string
        is split on ``,``/``+``. An unknown name is a ``ValueError`` listing the valid ones.
    split: ``train`` or ``evaluation`` (the hub's splits).
    revision: the hub commit read (default: the pinned ``BEAVERTAILS_V_REVISION``; ``None``
        or ``"main"`` read the hub unpinned, with a warning); ignored for a local folder.
    balance: ``"equal"``: the same number of records from every category, ``per_category``
        each (default: the smallest category's size); a category with fewer records is
        oversampled as ``saferlhf.data.mixing`` does (every record ``N // n`` times, plus a
        seeded ``N % n`` of them). ``"none"``: every record of every category, once.
    seed: the same seed gives the same records in the same order; each category's sample
        depends only on the seed and the category's name.
    kind: ``"pairs"`` (``PreferencePair``, for the reward and cost models) or ``"single"``
        (``GuardRecord``, the single-response schema).
    shuffle: interleave the categories (seeded); otherwise category by category.
    load_options: passed to ``load_pairs`` / ``load_guard_records`` (``on_bad_record``,
        ``image_root``, ``limit`` per category, ``verify_images``, ``format``, ...).

    Returns a ``LoadResult`` whose report is a :class:`MergedLoadReport`; every record's
    ``metadata["category"]`` names its category.
    """
    _check_options(kind, balance, per_category, load_options)
    fmt = load_options.pop("format", "auto")
    load_options["format"] = _FORMAT_OF_KIND[kind] if fmt in (None, "auto") else fmt
    configs = _configs(categories)
    folder = _local_folder(source)
    if folder is None:
        revision = _check_revision(revision)
    loaded = _load_categories(source, folder, configs, split, revision, kind, load_options)
    merged, take = _sample(loaded, configs, balance, per_category, seed)
    if shuffle:
        random.Random(f"{seed}/beavertails-v/shuffle").shuffle(merged)

    label = str(folder) if folder is not None else f"{source}@{revision}"
    report = MergedLoadReport(
        source=f"BeaverTails-V[{label}, split={split}, {len(configs)} categories]",
        format=next((r.report.format for r in loaded.values() if r.report.format), load_options["format"]),
        parts={config: result.report for config, result in loaded.items()},
        sampled=take, balance=balance, seed=seed,
    )
    for part in report.parts.values():
        report.total += part.total
        report.loaded += part.loaded
        report.skipped.extend(part.skipped)
        report.warnings.extend(part.warnings)
    log.info(report.summary())
    return LoadResult(merged, report)


def _check_options(kind: str, balance: str, per_category: int | None, load_options: dict[str, Any]) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if balance not in BALANCE_MODES:
        raise ValueError(f"balance must be one of {BALANCE_MODES}, got {balance!r}")
    if per_category is not None:
        if isinstance(per_category, bool) or not isinstance(per_category, int) or per_category < 0:
            raise ValueError(f"per_category must be a non-negative integer, got {per_category!r}")
        if balance != "equal":
            raise ValueError("per_category samples the same number from each category: use it with "
                             "balance='equal' (balance='none' keeps every record once)")
    if "config" in load_options and load_options["config"] is not None:
        raise ValueError("config= is chosen per category by load_beavertails_v; pass categories= instead")
    load_options.pop("config", None)


def _load_categories(source: Any, folder: Path | None, configs: list[str], split: str, revision: str | None,
                     kind: str, load_options: dict[str, Any]) -> dict[str, LoadResult]:
    """Each category's records (tagged with it) and its combined report, in ``configs`` order."""
    as_kind = as_pairs if kind == "pairs" else as_guard_records

    def loader(src: Any, **options: Any) -> LoadResult:
        return as_kind(read_records(src, **options))

    files = {} if folder is None else _local_files(folder, configs, split)  # every category found before any is read
    loaded: dict[str, LoadResult] = {}
    for config in configs:
        if folder is None:
            parts = [loader(str(source), config=config, split=split, revision=revision, **load_options)]
        else:
            parts = [loader(path, **load_options) for path in files[config]]
        records = [record for part in parts for record in part.records]
        for record in records:
            _tag(record, config)
        loaded[config] = LoadResult(records, _combine([part.report for part in parts], config))
    return loaded


def _sample(loaded: dict[str, LoadResult], configs: list[str], balance: str, per_category: int | None,
            seed: int) -> tuple[list[Any], dict[str, int]]:
    """The merged records (category by category) and how many were taken from each category."""
    merged: list[Any] = []
    if balance == "none":
        take = {config: len(result.records) for config, result in loaded.items()}
        for config in configs:
            merged.extend(loaded[config].records)
        return merged, take
    empty = [config for config, result in loaded.items() if not result.records]
    if empty and (per_category is None or per_category > 0):
        raise DataError(f"BeaverTails-V categories {empty} have no usable records (see the load report: "
                        "result.report.parts); leave them out with categories=")
    target = per_category if per_category is not None else min(len(r.records) for r in loaded.values())
    take = dict.fromkeys(configs, target)
    for config in configs:
        records = loaded[config].records
        rng = random.Random(f"{seed}/beavertails-v/{config}")
        merged.extend(records[i] for i in sample_indices(len(records), target, rng))
    return merged, take


def is_beavertails_v_spec(source: Any) -> bool:
    """Whether ``source`` is a ``beavertails-v:...`` data spec string."""
    return isinstance(source, str) and source.startswith(BEAVERTAILS_V_SPEC_PREFIX)


def parse_beavertails_v_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"beavertails-v:SOURCE?key=value&..."`` -> ``(SOURCE, options)``.

    SOURCE is the hub id or a local folder (empty: the hub id). Keys: ``categories``
    (joined by ``+`` or ``,``; use ``+`` inside a mix spec, which splits on commas),
    ``split``, ``revision``, ``per_category``, ``balance``, ``seed``, ``kind``, ``shuffle``.
    """
    if not is_beavertails_v_spec(spec):
        raise ValueError(f"not a BeaverTails-V data spec (must start with {BEAVERTAILS_V_SPEC_PREFIX!r}): {spec!r}")
    body = spec[len(BEAVERTAILS_V_SPEC_PREFIX):]
    source, _, query = body.partition("?")
    options: dict[str, Any] = {}
    for item in query.split("&") if query else ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{spec!r}: {item!r} is not key=value")
        key, value = unquote(key.strip()), unquote(value.strip())  # "+" stays a plus
        if key in options:
            raise ValueError(f"{spec!r}: {key!r} given twice")
        if key in ("per_category", "seed"):
            try:
                options[key] = int(value)
            except ValueError:
                raise ValueError(f"{spec!r}: {key} must be an integer, got {value!r}") from None
        elif key == "shuffle":
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"{spec!r}: shuffle must be true or false, got {value!r}")
            options[key] = value.lower() in ("true", "1", "yes")
        elif key in ("categories", "split", "revision", "balance", "kind"):
            options[key] = value
        else:
            raise ValueError(f"{spec!r}: unknown option {key!r}; use categories, split, revision, "
                             "per_category, balance, seed, kind, shuffle")
    return source.strip() or BEAVERTAILS_V_HUB_ID, options


def load_beavertails_v_spec(spec: str, **load_options: Any) -> LoadResult:
    """Load a ``beavertails-v:`` data spec: the hook through which ``load_records`` (and so
    every CLI stage's ``--data``) reads merged BeaverTails-V.

    ``load_options`` are ``load_records``'s; ``format="beavertails_v_single"`` selects
    ``kind="single"`` unless the spec names a kind. Options in the spec win over
    ``split``/``revision`` given here; ``None`` values mean "the default".
    """
    source, options = parse_beavertails_v_spec(spec)
    for key in ("split", "revision"):
        value = load_options.pop(key, None)
        if value is not None:
            options.setdefault(key, value)
    if load_options.get("format") == "beavertails_v_single":
        options.setdefault("kind", "single")
    return load_beavertails_v(source, **options, **{k: v for k, v in load_options.items() if v is not None})


# ---------------------------------------------------------------------------------------------


def _configs(categories: Iterable[str] | str | None) -> list[str]:
    if categories is None:
        return list(BEAVERTAILS_V_CATEGORIES)
    if isinstance(categories, str):
        categories = [part for part in categories.replace("+", ",").split(",") if part.strip()]
    configs: list[str] = []
    for name in categories:
        config = category_config(name)
        if config in configs:
            raise ValueError(f"BeaverTails-V category {config!r} is listed twice")
        configs.append(config)
    if not configs:
        raise ValueError("categories= is empty; leave it out (None) to load all 20")
    return configs


def _local_folder(source: Any) -> Path | None:
    """The local folder of ``source``, or ``None`` for a hub id."""
    path = Path(source)
    if path.is_dir():
        return path
    if path.exists():
        raise DataError(f"{path} is a file; load_beavertails_v reads a folder with one file per category "
                        "(or the hub id); load one category file with load_pairs")
    text = str(source)
    if isinstance(source, Path) or text.startswith(("/", "./", "../", "~")) or text.count("/") != 1:
        raise FileNotFoundError(f"BeaverTails-V folder {source} does not exist (a hub id is 'owner/name')")
    return None


def _check_revision(revision: str | None) -> str | None:
    if revision in (None, "main"):
        log.warning("BeaverTails-V read from the hub unpinned (revision=%r): the data may change under "
                    "this recipe; pin a commit sha", revision)
    if revision == _PLACEHOLDER_REVISION:
        raise DataError(
            "BEAVERTAILS_V_REVISION is still the all-zero placeholder (the commit could not be looked up "
            "when this code was written): pass revision=<the dataset's commit sha> (in a data spec: "
            "?revision=<sha>), or set BEAVERTAILS_V_REVISION in src/saferlhf/data/beavertails_v.py; "
            "revision='main' reads the hub unpinned on purpose"
        )
    return revision


def _local_files(folder: Path, configs: Sequence[str], split: str) -> dict[str, list[Path]]:
    """Each category's file(s) in a local folder (module docstring for the layouts); one error
    names every missing category with the paths it was looked for at."""
    files: dict[str, list[Path]] = {}
    missing: list[str] = []
    suffixes = "{" + ",".join(s.lstrip(".") for s in _SUFFIXES) + "}"
    for config in configs:
        found = _category_files(folder, config, split)
        if found:
            files[config] = found
        else:
            missing.append(f"{config!r}: {folder / config / split}.{suffixes}, {folder / config / split}-*.parquet, "
                           f"{folder / split / config}.{suffixes} or {folder / config}.{suffixes}")
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} BeaverTails-V categor{'y is' if len(missing) == 1 else 'ies are'} missing from "
            f"{folder} ({split} split); expected:\n  " + "\n  ".join(missing)
            + "\n(leave a category out with categories=, which defaults to all 20)"
        )
    return files


def _category_files(folder: Path, config: str, split: str) -> list[Path]:
    for name in dict.fromkeys((config, config.replace("_", "-"))):
        for stem in (folder / name / split, folder / split / name, folder / name):
            for suffix in _SUFFIXES:
                path = stem.with_name(stem.name + suffix)
                if path.is_file():
                    return [path]
            if stem == folder / name / split:  # DIR/<category>/<split>-*.parquet: hub shards
                shards = sorted(stem.parent.glob(f"{split}-*.parquet"))
                if shards:
                    return shards
    return []


def _tag(record: Any, config: str) -> None:
    """Name the record's category in its metadata; a row without one gets its config's."""
    metadata = record.metadata
    if metadata.get("category") not in (None, ""):
        return
    metadata["category"] = config
    # The adapter could not know the category: label the unsafe response(s) with it.
    for suffix in ("_a", "_b", ""):
        safe = getattr(record, f"safe{suffix}", None)
        if safe is False and not getattr(record, f"categories{suffix}"):
            setattr(record, f"categories{suffix}", frozenset((config,)))


def _combine(reports: Sequence[LoadReport], config: str) -> LoadReport:
    if len(reports) == 1:
        return reports[0]
    combined = LoadReport(source=f"{config} ({len(reports)} files)", format=reports[0].format)
    for report in reports:
        combined.total += report.total
        combined.loaded += report.loaded
        combined.skipped.extend(report.skipped)
        combined.warnings.extend(report.warnings)
    return combined
