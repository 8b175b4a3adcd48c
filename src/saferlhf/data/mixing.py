"""Mixing several sources into one training set, deterministically (DESIGN §3.2).

Each source takes an *amount*:

* a proportion of that source (a number with a decimal point or a percent sign: ``0.5``,
  ``50%``; above 1 oversamples: ``1.5`` = every record once plus a random half again);
* an absolute count (an integer: ``2000``), oversampled when larger than the source
  (every record ``count // len`` times, plus a random ``count % len`` of them);
* nothing: the whole source once.

A spec string lists sources with their amounts: ``"a.jsonl:0.7,b.jsonl:2000,c.parquet"``.
The same seed gives the same mixture; each source's sample depends only on the seed, its
position and its name, so changing one source's amount does not reshuffle the others.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("saferlhf.data")

_COUNT = re.compile(r"\d+")
_PROPORTION = re.compile(r"(\d+\.\d*|\.\d+)")
_PERCENT = re.compile(r"(\d+(?:\.\d*)?)%")


@dataclass(frozen=True)
class MixComponent:
    """One entry of a mix spec: a source name and its amount (see the module docstring)."""

    name: str
    amount: float | int | None = None


@dataclass
class MixSource:
    """Records of one source, with the amount to take from them."""

    name: str
    records: Sequence[Any]
    amount: float | int | None = None


def parse_amount(text: str) -> float | int | None:
    """``"0.7"`` -> 0.7 (proportion), ``"70%"`` -> 0.7, ``"2000"`` -> 2000 (count); else None."""
    text = text.strip()
    if _COUNT.fullmatch(text):
        return int(text)
    if _PROPORTION.fullmatch(text):
        return float(text)
    percent = _PERCENT.fullmatch(text)
    if percent:
        return float(percent.group(1)) / 100
    return None


def parse_mix_spec(spec: str) -> list[MixComponent]:
    """``"a.jsonl:0.7,b.jsonl:2000"`` -> components. A source without ``:amount`` is taken whole."""
    components = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            raise ValueError(f"empty source in mix spec {spec!r}")
        name, sep, tail = part.rpartition(":")
        amount = parse_amount(tail) if sep else None
        if amount is None:  # no amount, or a colon that belongs to the name
            name = part
        elif not name:
            raise ValueError(f"mix spec entry {part!r} has an amount but no source")
        components.append(MixComponent(name, amount))
    return components


def sample_size(available: int, amount: float | None) -> int:
    """How many records an amount asks for from a source of ``available`` records."""
    if amount is None:
        return available
    if isinstance(amount, bool) or amount < 0:
        raise ValueError(f"amount must be a non-negative proportion or count, got {amount!r}")
    if isinstance(amount, int):
        return amount
    return round(amount * available)


def sample_indices(available: int, size: int, rng: random.Random) -> list[int]:
    """``size`` indices into ``available`` items: whole passes, then a random remainder, sorted."""
    if size and not available:
        raise ValueError(f"cannot take {size} records from an empty source")
    passes, remainder = divmod(size, available) if available else (0, 0)
    return sorted(list(range(available)) * passes + rng.sample(range(available), remainder))


def mix(
    sources: Sequence[MixSource | tuple[Sequence[Any], float | int | None]] | Mapping[str, Any],
    *,
    seed: int,
    shuffle: bool = True,
) -> list[Any]:
    """One list of records drawn from several sources by their amounts, deterministic in ``seed``.

    sources: ``MixSource`` objects, ``(records, amount)`` tuples, or a mapping
    ``name -> records`` / ``name -> (records, amount)``.
    shuffle: interleave the sources (seeded); otherwise source by source, each in its order.
    """
    mixed: list[Any] = []
    for position, source in enumerate(_as_sources(sources)):
        rng = random.Random(f"{seed}/{position}/{source.name}")
        size = sample_size(len(source.records), source.amount)
        indices = sample_indices(len(source.records), size, rng)
        log.info("mix: %d records from %s (%d available)", size, source.name, len(source.records))
        mixed.extend(source.records[i] for i in indices)
    if shuffle:
        random.Random(f"{seed}/shuffle").shuffle(mixed)
    return mixed


def _as_sources(sources: Any) -> list[MixSource]:
    if isinstance(sources, Mapping):
        items = [(name, value) for name, value in sources.items()]
    else:
        items = [(None, value) for value in sources]
    result = []
    for i, (name, value) in enumerate(items):
        if isinstance(value, MixSource):
            result.append(value)
        elif isinstance(value, tuple) and len(value) == 2 and (value[1] is None or isinstance(value[1], (int, float))):
            result.append(MixSource(name or f"source{i}", value[0], value[1]))
        else:
            result.append(MixSource(name or f"source{i}", value, None))
    return result
