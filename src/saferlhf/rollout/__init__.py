"""Rollout backends: sample responses as token ids (HF ``generate`` by default; vLLM on GPUs).

See :mod:`saferlhf.rollout.base` for the :class:`RolloutBatch` layout and the backend contract.
"""

from saferlhf.rollout.base import RolloutBackend, RolloutBatch, SamplingParams, build_rollout_batch
from saferlhf.rollout.hf import HFRolloutBackend

BACKENDS = ("hf", "vllm")


def make_rollout_backend(name: str, policy, tokenizer, **kwargs) -> RolloutBackend:
    """The rollout backend ``name`` (``hf`` | ``vllm``) sampling from ``policy``.

    ``kwargs`` go to the backend's constructor (``sampling``, ``unwrap``, ``eos_token_id``, …;
    vllm also needs ``model_path``, the policy's ``save_pretrained`` folder). Raises
    :class:`saferlhf.config.ConfigError` (CLI exit 2) for an unknown name, and, for vllm,
    when the package is not installed or no CUDA GPU is visible.
    """
    from saferlhf.config import ConfigError

    if name == "hf":
        kwargs.pop("model_path", None)
        return HFRolloutBackend(policy, tokenizer, **kwargs)
    if name == "vllm":
        from saferlhf.rollout.vllm import VLLMRolloutBackend, check_vllm_available

        check_vllm_available()
        if "model_path" not in kwargs:
            raise ConfigError("--backend vllm: the engine needs model_path= (the policy's save_pretrained folder)")
        return VLLMRolloutBackend(policy, tokenizer, **kwargs)
    raise ConfigError(f"unknown rollout backend {name!r}; choose from {', '.join(BACKENDS)}")

__all__ = [
    "BACKENDS",
    "HFRolloutBackend",
    "RolloutBackend",
    "RolloutBatch",
    "SamplingParams",
    "build_rollout_batch",
    "make_rollout_backend",
]
