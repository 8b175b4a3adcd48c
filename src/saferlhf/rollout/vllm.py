"""Rollouts with a colocated vLLM engine (``--backend vllm``; needs a CUDA GPU and
``pip install 'saferlhf[vllm]'``).

* The engine (``vllm.LLM``) lives in the training process, on the same GPU, started from the
  policy's ``save_pretrained`` folder. It samples token ids only: log-probs for ratios, KL and
  entropy are always recomputed by the training model (the engine's are never requested).
* After each policy update :meth:`VLLMRolloutBackend.sync_weights` pushes the weights into the
  engine: full weights through the engine model's ``load_weights`` (HF parameter names), or,
  for a LoRA policy, the adapter saved to a folder and used through a fresh ``LoRARequest``.
* Sampling follows :class:`saferlhf.rollout.base.SamplingParams` exactly as the HF backend does
  (:func:`vllm_sampling_kwargs`): every distribution-changing field is set explicitly and the
  checkpoint's ``generation_config`` is ignored (``generation_config="vllm"``).
* Rows are packed by :func:`saferlhf.rollout.base.build_rollout_batch`, so the batch layout is
  the HF backend's. A response stopped on an EOS that the engine left out of ``token_ids``
  gets that EOS appended, so ``ended_with_eos`` means the same thing for both backends.
* Text policies only: vision-language rollouts stay on the HF backend.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import torch

from saferlhf.config import ConfigError
from saferlhf.rollout.base import RolloutBackend, RolloutBatch, SamplingParams, build_rollout_batch

VLLM_HINT = "install it on a CUDA machine with `pip install 'saferlhf[vllm]'`, or use --backend hf"


def check_vllm_available(*, has_module: bool | None = None, has_cuda: bool | None = None) -> None:
    """Raise :class:`ConfigError` (CLI exit 2) naming vllm when the vllm backend cannot run here."""
    if has_module is None:
        has_module = importlib.util.find_spec("vllm") is not None
    if not has_module:
        raise ConfigError(f"--backend vllm: the vllm package is not installed; {VLLM_HINT}")
    if has_cuda is None:
        has_cuda = torch.cuda.is_available()
    if not has_cuda:
        raise ConfigError(f"--backend vllm: vllm needs a CUDA GPU and none is visible; {VLLM_HINT}")


def vllm_sampling_kwargs(sampling: SamplingParams, *, eos_token_ids: Sequence[int],
                         n: int | None = None, seed: int | None = None) -> dict[str, Any]:
    """Keyword arguments of ``vllm.SamplingParams`` that sample what the HF backend samples.

    greedy (temperature 0): temperature 0, top_p 1, top_k off. top_k 0/None = off (vLLM: −1).
    Penalties other than ``repetition_penalty`` (which both engines apply the same way, as a
    division of positive logits / multiplication of negative ones over prompt and output
    tokens) are zeroed; ``min_p`` 0; stopping on any of ``eos_token_ids`` and at
    ``max_new_tokens``; no engine log-probs; no detokenisation (ids are the output)."""
    greedy = sampling.greedy
    return {
        "n": int(n if n is not None else sampling.n),
        "temperature": 0.0 if greedy else float(sampling.temperature),
        "top_p": 1.0 if greedy else float(sampling.top_p),
        "top_k": -1 if (greedy or not sampling.top_k) else int(sampling.top_k),
        "min_p": 0.0,
        "repetition_penalty": float(sampling.repetition_penalty),
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "max_tokens": int(sampling.max_new_tokens),
        "min_tokens": 0,
        "stop_token_ids": [int(e) for e in eos_token_ids],
        "ignore_eos": False,
        "logprobs": None,
        "prompt_logprobs": None,
        "detokenize": False,
        "skip_special_tokens": True,
        "seed": seed,
    }


def responses_from_outputs(outputs: Sequence[Any], eos_token_ids: Sequence[int]) -> list[list[int]]:
    """Per row (prompt-major, ``n`` per prompt) generated ids from vLLM ``RequestOutput``s.

    A completion that finished on a stop token (``finish_reason == "stop"`` with an integer
    ``stop_reason``) but whose ids lack it gets it appended; an empty completion becomes the
    single EOS it stopped on."""
    eos = {int(e) for e in eos_token_ids}
    rows: list[list[int]] = []
    for req in outputs:
        for comp in req.outputs:
            ids = [int(t) for t in comp.token_ids]
            reason = getattr(comp, "stop_reason", None)
            stopped = getattr(comp, "finish_reason", None) == "stop"
            if stopped and (not ids or ids[-1] not in eos):
                stop_id = int(reason) if isinstance(reason, int) else next(iter(sorted(eos)))
                ids.append(stop_id)
            rows.append(ids)
    return rows


class VLLMRolloutBackend(RolloutBackend):
    """Sample with a colocated ``vllm.LLM`` started from ``model_path``.

    model: the trained policy (possibly wrapped; ``unwrap`` unwraps it), read at each
    :meth:`sync_weights`. lora: sync the LoRA adapter through ``LoRARequest`` instead of full
    weights (the engine starts with ``enable_lora`` and ``max_lora_rank``).
    gpu_memory_utilization: the engine's share of the GPU (weights + KV cache); the rest is
    the trainer's. sleep: release the engine's KV cache between rollouts (vLLM sleep mode).
    """

    backend_name = "vllm"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        model_path: str,
        sampling: SamplingParams | None = None,
        eos_token_id: int | Sequence[int] | None = None,
        pad_token_id: int | None = None,
        lora: bool = False,
        max_lora_rank: int = 64,
        gpu_memory_utilization: float = 0.3,
        max_model_len: int | None = None,
        dtype: str = "bfloat16",
        seed: int = 0,
        sleep: bool = False,
        decode: bool = True,
        unwrap: Callable[[Any], Any] | None = None,
        engine: Any = None,
    ) -> None:
        if engine is None:
            check_vllm_available()
        self._init_common(model, tokenizer, sampling=sampling, decode=decode, unwrap=unwrap,
                          eos_token_id=eos_token_id, pad_token_id=pad_token_id)
        self.lora = lora
        self.sleep = sleep
        self._lora_request = None
        self._lora_version = 0
        self._lora_dir = tempfile.TemporaryDirectory(prefix="saferlhf-vllm-lora-") if lora else None
        if engine is None:
            # Weight sync reaches into the engine's model object: keep the engine in this process.
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            from vllm import LLM

            kwargs: dict[str, Any] = dict(
                model=model_path, dtype=dtype, seed=seed, gpu_memory_utilization=gpu_memory_utilization,
                generation_config="vllm", enable_sleep_mode=sleep, enable_prefix_caching=True,
            )
            if max_model_len:
                kwargs["max_model_len"] = max_model_len
            if lora:
                kwargs.update(enable_lora=True, max_lora_rank=max_lora_rank, max_loras=1)
            engine = LLM(**kwargs)
        self.engine = engine

    # ------------------------------------------------------------------ weights
    def _engine_model(self) -> Any:
        """The ``nn.Module`` inside the engine (in-process engine; V0 and V1 layouts)."""
        eng = getattr(self.engine, "llm_engine", self.engine)
        for path in ("model_executor.driver_worker.model_runner.model",
                     "model_executor.driver_worker.worker.model_runner.model",
                     "engine_core.engine_core.model_executor.driver_worker.worker.model_runner.model"):
            obj: Any = eng
            try:
                for part in path.split("."):
                    obj = getattr(obj, part)
            except AttributeError:
                continue
            return obj
        raise RuntimeError("cannot reach the vLLM engine's model (is VLLM_ENABLE_V1_MULTIPROCESSING=0?)")

    def sync_weights(self, model: Any = None) -> None:
        """Push the policy's current weights into the engine (full weights, or the LoRA adapter)."""
        if model is not None:
            self.model = model
        policy = self.unwrap(self.model) if self.unwrap is not None else self.model
        # Under ZeRO-3 every rank's engine needs the full weights: gathered here (collective).
        from saferlhf.distributed import gathered_parameters, iter_full_weights

        if self.lora:
            from vllm.lora.request import LoRARequest

            self._lora_version += 1
            path = os.path.join(self._lora_dir.name, f"v{self._lora_version}")
            with gathered_parameters(p for p in policy.parameters() if p.requires_grad):  # the adapter only
                policy.save_pretrained(path)
            self._lora_request = LoRARequest(f"policy-v{self._lora_version}", self._lora_version, path)
            return
        from saferlhf.models.loading import is_peft_model, peft_clean_state_dict

        with torch.no_grad():
            if is_peft_model(policy):  # adapter merged into the base, under the base model's names
                with gathered_parameters(policy.parameters()):
                    items = peft_clean_state_dict(policy, merged=True, to_cpu=False).items()
                    self._engine_model().load_weights(weights=((name, p.detach()) for name, p in items))
            else:  # one module's weights at a time (bounded memory under ZeRO-3)
                self._engine_model().load_weights(weights=iter_full_weights(policy))
        reset = getattr(self.engine, "reset_prefix_cache", None)
        if callable(reset):
            reset()  # cached prefixes hold keys/values of the old weights

    # ------------------------------------------------------------------ sampling
    def _sample(self, prompts: list[list[int]], *, n: int, sampling: SamplingParams, seed: int | None,
                image_inputs: Any) -> RolloutBatch:
        if image_inputs is not None:
            raise ConfigError("--backend vllm samples text policies only; use --backend hf for a VLM policy")
        from vllm import SamplingParams as VSamplingParams

        params = VSamplingParams(**vllm_sampling_kwargs(sampling, eos_token_ids=self.eos_token_ids, n=n, seed=seed))
        if self.sleep:
            self.engine.wake_up()
        outputs = self.engine.generate([{"prompt_token_ids": p} for p in prompts], sampling_params=params,
                                       lora_request=self._lora_request, use_tqdm=False)
        if self.sleep:
            self.engine.sleep(level=1)
        rows = [p for p in prompts for _ in range(n)]
        batch = build_rollout_batch(
            rows, responses_from_outputs(outputs, self.eos_token_ids), pad_token_id=self.pad_token_id,
            eos_token_ids=self.eos_token_ids, prompt_index=[i for i in range(len(prompts)) for _ in range(n)])
        policy = self.unwrap(self.model) if self.unwrap is not None else self.model
        try:
            device = next(policy.parameters()).device
        except (StopIteration, AttributeError):
            device = torch.device("cuda")
        return batch.to(device)

    def close(self) -> None:
        if self._lora_dir is not None:
            self._lora_dir.cleanup()
        self.engine = None
