"""saferlhf: constrained (safe) alignment of language and vision-language models.

Pipeline: ``data -> processing -> models -> losses -> trainers -> eval`` (docs/architecture.md).

The Python API follows TRL's conventions::

    from saferlhf import RLConfig, SafeRLTrainer
    trainer = SafeRLTrainer(RLConfig(out="runs/rl"), policy=model, processing_class=tokenizer,
                            reward_model=reward_fn, cost_model=cost_model, train_dataset=prompts)
    trainer.train()

Names are imported on first use, so ``import saferlhf`` (and ``saferlhf --help``) stays fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "SFTTrainer": "saferlhf.trainers.sft",
    "ScoreModelTrainer": "saferlhf.trainers.score",
    "SafeRLTrainer": "saferlhf.trainers.rl",
    "DPOTrainer": "saferlhf.trainers.preference",
    "DPOConfig": "saferlhf.config.stages",
    "SFTConfig": "saferlhf.config.stages",
    "RewardModelConfig": "saferlhf.config.stages",
    "CostModelConfig": "saferlhf.config.stages",
    "RLConfig": "saferlhf.config.stages",
    "LagrangeConfig": "saferlhf.config.lagrange",
    "LagrangeMultiplier": "saferlhf.lagrange",
    "ScoreModel": "saferlhf.models.score_model",
    "Processor": "saferlhf.processing",
    "TextProcessor": "saferlhf.processing",
    "VLMProcessor": "saferlhf.processing",
    "load_processor": "saferlhf.processing",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'saferlhf' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
