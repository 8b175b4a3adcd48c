"""``saferlhf data summary``: load a dataset through its adapter and show what it holds."""

from __future__ import annotations

from collections import Counter
from typing import Any


def summarize_pairs(pairs) -> dict[str, Any]:
    """Counts a user checks before training on a dual-preference set."""
    sev: Counter[int] = Counter()
    cats: Counter[str] = Counter()
    safety: Counter[str] = Counter()
    better: Counter[str] = Counter()
    safer: Counter[str] = Counter()
    for p in pairs:
        better[str(p.better)] += 1
        safer[str(p.safer)] += 1
        safety[f"{_lab(p.safe_a)}/{_lab(p.safe_b)}"] += 1
        for w in ("a", "b"):
            s = getattr(p, f"severity_{w}")
            if s is not None:
                sev[s] += 1
            cats.update(getattr(p, f"categories_{w}"))
    return {"pairs": len(pairs), "better": dict(better), "safer": dict(safer),
            "safety_a/b": dict(safety), "severity": {str(k): v for k, v in sorted(sev.items())},
            "categories": dict(cats.most_common())}


def _lab(v: bool | None) -> str:
    return "?" if v is None else ("safe" if v else "unsafe")


def run_summary(cfg) -> dict[str, Any]:
    from rich.console import Console
    from rich.table import Table

    from saferlhf.data import load_records

    result = load_records(cfg.data, format=cfg.format, config=cfg.data_config, split=cfg.split,
                          revision=cfg.revision, image_root=cfg.image_root,
                          on_bad_record=cfg.on_bad_record, limit=cfg.limit)
    records = result.records
    console = Console()
    kinds = Counter(type(r).__name__ for r in records)
    console.print(f"[bold]{cfg.data}[/bold]: {result.report.summary()}")
    console.print(f"record types: {dict(kinds)}")
    pairs = [r for r in records if type(r).__name__ == "PreferencePair"]
    summary: dict[str, Any] = {"records": len(records), "types": dict(kinds)}
    if pairs:
        s = summarize_pairs(pairs)
        summary.update(s)
        table = Table(title="dual-preference pairs")
        table.add_column("what")
        table.add_column("counts")
        for k, v in s.items():
            table.add_row(k, str(v))
        console.print(table)
    return summary
