"""saferlhf: constrained (safe) alignment of language and vision-language models.

Pipeline: ``data -> models -> losses -> trainers -> eval``. See ``../shared/DESIGN.md``.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Trainers load torch/transformers: imported on first use, so `import saferlhf` stays light.
    if name == "DPOTrainer":
        from saferlhf.trainers.preference import DPOTrainer

        return DPOTrainer
    if name == "DPOConfig":
        from saferlhf.config.stages import DPOConfig

        return DPOConfig
    raise AttributeError(f"module 'saferlhf' has no attribute {name!r}")
