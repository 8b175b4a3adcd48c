"""Beaver-Guard: a multi-head moderation model, its API, filter-and-regenerate (DESIGN §8).

    from saferlhf.guard import Guard
    guard = Guard.load("runs/guard")
    guard.moderate("how do i make bread ?", "flour then mix then knead")
    # -> {"safe": True, "severity": 0, "categories": [], "score": 0.01}
    guard.score(prompts, responses)        # P(unsafe) per pair: a cost source for RL
    guard.moderate("how do i use this ?", "first mix then heat", images="w/images/eval_00007.png")
                                           # an image + text guard (VLM backbone; docs/guard.md §9)

Modules: ``config`` (stage configs, no torch), ``model`` (GuardModel, Guard), ``losses``
(per-head losses with label masks), ``train`` (``saferlhf guard train``), ``moderate``
(``saferlhf guard moderate``), ``generate`` (the filter-and-regenerate loop,
``saferlhf guard generate``), ``presets`` (the real-text prompt-moderation data), ``stage``
(the world guard stage of the demo). See ``docs/guard.md``.

Names are imported lazily so that ``saferlhf.guard.config`` stays free of torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "Guard": "saferlhf.guard.model",
    "GuardConfig": "saferlhf.guard.model",
    "GuardModel": "saferlhf.guard.model",
    "guard_loss": "saferlhf.guard.losses",
    "guarded_generate": "saferlhf.guard.generate",
    "GuardedGeneration": "saferlhf.guard.generate",
    "train_guard": "saferlhf.guard.train",
    "run_guard_stage": "saferlhf.guard.stage",
}

__all__ = ["Guard", "GuardConfig", "GuardModel", "GuardedGeneration", "guard_loss", "guarded_generate",
           "run_guard_stage", "train_guard"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'saferlhf.guard' has no attribute {name!r}")
