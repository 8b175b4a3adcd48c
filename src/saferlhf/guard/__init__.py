"""Beaver-Guard: a multi-head moderation model, its API, filter-and-regenerate (DESIGN §8).

    from saferlhf.guard import Guard
    guard = Guard.load("runs/guard")
    guard.moderate("how do i make bread ?", "flour then mix then knead")
    # -> {"safe": True, "severity": 0, "categories": [], "score": 0.01}
    guard.score(prompts, responses)        # P(unsafe) per pair: a cost source for RL
    guard.moderate("how do i use this ?", "first mix then heat", images="w/images/eval_00007.png")
                                           # an image + text guard (VLM backbone; docs/guard.md §9)

Modules: ``config`` (stage configs, no torch), ``model`` (GuardModel, Guard), ``losses``
(per-head losses with label masks), ``moderate``
(``saferlhf guard moderate``), ``generate`` (the filter-and-regenerate loop,
``saferlhf guard generate``), ``presets`` (the real-text prompt-moderation data). Training
lives with the other trainers (``saferlhf.trainers.guard``: ``saferlhf guard train``), the world
guard stage of the demo in ``saferlhf.recipes.guard_stage``. See ``docs/guard.md``.

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
}

__all__ = ["Guard", "GuardConfig", "GuardModel", "GuardedGeneration", "guard_loss", "guarded_generate"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'saferlhf.guard' has no attribute {name!r}")
