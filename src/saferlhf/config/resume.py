"""Resuming a run: which config keys may change, and the check of a new config against the
one a run recorded (``run_config.json``). Torch-free, so the CLI can check before loading."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from saferlhf.config.base import ConfigError, to_dict

RUN_CONFIG = "run_config.json"
MUTABLE_ON_RESUME = frozenset({
    "resume", "overwrite", "out", "max_steps", "epochs", "iterations", "save_every", "eval_every", "log_every",
    "report_to", "progress", "eval_data", "eval_prompts", "max_bad_fraction",
})
"""Keys a resumed run may change (the budget, evaluation and logging); all others are fixed."""



def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def config_changes(saved: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Keys whose value differs, as ``{key: (saved, new)}`` (keys absent from ``saved`` are new
    options of a later version and count as unchanged)."""
    a, b = flatten(saved), flatten(new)
    return {k: (a[k], b[k]) for k in b if k in a and a[k] != b[k]}


def check_resume_config(out: str | os.PathLike, cfg: Any, *, stage: str = "",
                        quiet: bool = False) -> dict[str, tuple[Any, Any]]:
    """Raise ConfigError when ``cfg`` changes a key that is fixed for the run in ``out``.

    Returns the changed mutable keys (applied by the resumed run). Without a saved config
    (an older run) nothing is compared.
    """
    path = Path(out) / RUN_CONFIG
    if not path.is_file():
        return {}
    try:
        saved = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(f"{path} is not valid JSON, so --resume cannot check the run's config; restore it, or "
                          "start again with --overwrite") from None
    changes = config_changes(saved, to_dict(cfg))
    fixed = {k: v for k, v in changes.items() if k.split(".")[-1] not in MUTABLE_ON_RESUME}
    if fixed:
        listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(fixed.items()))
        raise ConfigError(
            f"--resume: {len(fixed)} key(s) differ from the run in {out} and cannot change on resume "
            f"({listed}). Give the run's values again (see {path}), or start a new run with --overwrite or "
            f"another --out. Keys that may change on resume: {', '.join(sorted(MUTABLE_ON_RESUME - {'out'}))}")
    mutable = {k: v for k, v in changes.items() if k not in ("resume", "overwrite", "out")}
    if mutable and not quiet:
        listed = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in sorted(mutable.items()))
        print(f"saferlhf {stage}: --resume applies the changed keys: {listed}", file=sys.stderr)
    return mutable
