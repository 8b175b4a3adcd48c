"""Rollouts with HF ``generate`` (the default backend; runs on CPU).

* Prompts (token ids) are left-padded with the pad id; the attention mask marks real tokens.
* ``generate`` derives ``position_ids = cumsum(attention_mask) − 1`` (pads → 0) for models
  whose ``forward`` takes ``position_ids`` (Llama, GPT-2, …; transformers 5.x
  ``GenerationMixin._prepare_position_ids_for_generation``) and extends them by +1 per step,
  which is exactly what :func:`saferlhf.models.policy.forward_logprobs` uses — tested for the
  tiny Llama- and GPT-2-style models in ``tests/test_rollout.py``.
* Sampling is fully specified by :class:`SamplingParams`: a fresh ``GenerationConfig`` is
  built per call with every distribution-changing field set explicitly, and the checkpoint's
  ``generation_config`` is hidden during the call (transformers fills unset fields from it and
  then from global defaults, which include ``top_k=50``).
* Generation runs under ``torch.inference_mode()`` (``no_grad`` under ZeRO-3) in eval mode (each submodule's mode is
  restored afterwards); the returned batch holds ordinary tensors built from the ids, so it
  can feed a training forward pass with autograd.
* Vision-language policies (LLaVA, Qwen2-VL …, through their own transformers classes): give
  a :class:`saferlhf.models.tiny_vlm.VLMProcessor` as ``tokenizer`` and the prompts' images as
  ``generate(..., image_inputs=...)`` (one row per prompt; prompt ids with the image tokens
  expanded, e.g. from ``processor.prepare``). Rows are repeated ``n`` times and split by
  ``batch_size`` together with their images (``ImageInputs.select``); the processor adds what
  the model needs besides ``pixel_values`` (Qwen2-VL: ``image_grid_thw``, ``mm_token_type_ids``;
  the model builds its M-RoPE positions itself). Image tokens are never sampled
  (``suppress_tokens = processor.image_token_ids``): a generated image token has no features
  and the next forward pass would fail. Suppression changes the *sampling* distribution only
  where the policy puts mass on image tokens; ratios and KL are computed from plain forward
  passes as always.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from saferlhf.data.collate import pad_sequences
from saferlhf.distributed import inference_context
from saferlhf.models.policy import eval_mode, unwrap_model
from saferlhf.rollout.base import RolloutBackend, RolloutBatch, SamplingParams, build_rollout_batch


@contextmanager
def _rng_scope(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed torch's RNG for the duration of the block without disturbing the caller's stream."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextmanager
def _neutral_generation_config(model: nn.Module) -> Iterator[None]:
    """Hide the checkpoint's ``generation_config`` during ``generate``.

    transformers fills every field we leave unset from ``model.generation_config`` (a
    checkpoint's temperature 0.6 / top_p 0.9 / min_p / suppress_tokens …) before its global
    defaults; RL sampling must follow :class:`SamplingParams` only. The special-token ids are
    kept. For a peft model the swap happens on the transformers model underneath.
    """
    from transformers import GenerationConfig

    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    old = getattr(target, "generation_config", None)
    if old is None:
        yield
        return
    target.generation_config = GenerationConfig(
        bos_token_id=old.bos_token_id,
        eos_token_id=old.eos_token_id,
        pad_token_id=old.pad_token_id,
        decoder_start_token_id=old.decoder_start_token_id,
    )
    try:
        yield
    finally:
        target.generation_config = old


def _model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        return torch.device("cpu")


class HFRolloutBackend(RolloutBackend):
    """Sample with ``model.generate`` (KV cache on by default).

    model: the policy, possibly wrapped (DDP / accelerate / DeepSpeed / compiled); unwrapped at
    each call (``unwrap``: e.g. ``accelerator.unwrap_model``). A peft model is used as is.
    tokenizer: gives pad/EOS ids and decodes ``response_texts`` (``decode=True``).
    eos_token_id: one id or several (any of them ends a row); defaults to the tokenizer's, then
    the model's ``generation_config``. pad_token_id: defaults likewise, then to the first EOS.
    batch_size: generate at most this many rows at once (rows are split in order; the same
    seed with a different batch_size gives different samples).
    use_cache: the KV cache (off only for benchmarking).
    """

    backend_name = "hf"

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any = None,
        *,
        sampling: SamplingParams | None = None,
        pad_token_id: int | None = None,
        eos_token_id: int | Sequence[int] | None = None,
        use_cache: bool = True,
        batch_size: int | None = None,
        decode: bool = True,
        unwrap: Callable[[nn.Module], nn.Module] | None = None,
    ) -> None:
        self.use_cache = use_cache
        self.batch_size = batch_size
        # A VLM processor: vision kwargs for generate, and tokens that must never be sampled.
        self.suppress_tokens: list[int] = list(getattr(tokenizer, "image_token_ids", None) or [])
        self._init_common(model, tokenizer, sampling=sampling, decode=decode, unwrap=unwrap,
                          eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                          generation_config=getattr(unwrap_model(model, unwrap), "generation_config", None))

    # ------------------------------------------------------------------ API
    def sync_weights(self, model: Any = None) -> None:
        """No-op: ``generate`` samples from the live module. A different module object
        replaces the one held."""
        if model is not None and model is not self.model:
            self.model = model

    def generation_config(self, sampling: SamplingParams):
        """The fully explicit ``GenerationConfig`` used for ``sampling``."""
        from transformers import GenerationConfig

        greedy = sampling.greedy
        return GenerationConfig(
            max_new_tokens=sampling.max_new_tokens,
            do_sample=not greedy,
            num_beams=1,
            num_return_sequences=1,
            temperature=1.0 if greedy else float(sampling.temperature),
            # greedy: leave top_k unset (an explicit 0 triggers a "flag ignored" warning)
            top_k=None if greedy else int(sampling.top_k or 0),
            top_p=1.0 if greedy else float(sampling.top_p),
            typical_p=1.0,
            epsilon_cutoff=0.0,
            eta_cutoff=0.0,
            repetition_penalty=float(sampling.repetition_penalty),
            no_repeat_ngram_size=0,
            use_cache=self.use_cache,
            pad_token_id=self.pad_token_id,
            eos_token_id=list(self.eos_token_ids),
            return_dict_in_generate=False,
            output_scores=False,
            suppress_tokens=list(self.suppress_tokens) or None,
        )

    def _row_images(self, image_inputs: Any, n_prompts: int, n: int) -> Any:
        """The vision inputs of every generated row (each prompt's repeated ``n`` times)."""
        if image_inputs is None:
            return None
        if len(image_inputs.images_per_row) != n_prompts:
            raise ValueError(f"image_inputs has {len(image_inputs.images_per_row)} rows for {n_prompts} prompts")
        if not hasattr(self.tokenizer, "model_kwargs"):
            raise ValueError("image_inputs need a VLM processor as the backend's tokenizer (it builds the "
                             "vision kwargs)")
        return image_inputs.repeat_rows(n) if n > 1 else image_inputs

    def _sample(self, prompts: list[list[int]], *, n: int, sampling: SamplingParams, seed: int | None,
                image_inputs: Any) -> RolloutBatch:
        rows = [p for p in prompts for _ in range(n)]
        prompt_index = [i for i in range(len(prompts)) for _ in range(n)]
        B = len(rows)
        row_images = self._row_images(image_inputs, len(prompts), n)
        P = max(len(p) for p in rows)

        model = unwrap_model(self.model, self.unwrap)
        device = _model_device(model)
        input_ids, attention_mask = pad_sequences(rows, self.pad_token_id, side="left")
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)

        cfg = self.generation_config(sampling)
        step = self.batch_size or B
        responses: list[list[int]] = []
        with (
            inference_context(),  # no_grad under ZeRO-3 (saferlhf.distributed.inference_context)
            eval_mode(model),
            _neutral_generation_config(model),
            _rng_scope(seed, device),
        ):
            for s in range(0, B, step):
                ids = input_ids[s : s + step]
                vision = {}
                if row_images is not None:
                    part = row_images if (s == 0 and step >= B) else row_images.select(range(s, min(B, s + step)))
                    vision = self.tokenizer.model_kwargs(ids, part.to(device))
                out = model.generate(
                    input_ids=ids,
                    attention_mask=attention_mask[s : s + step],
                    generation_config=cfg,
                    **vision,
                )
                responses.extend(out[:, P:].tolist())

        batch = build_rollout_batch(
            rows,
            responses,
            pad_token_id=self.pad_token_id,
            eos_token_ids=self.eos_token_ids,
            prompt_index=prompt_index,
        )
        if row_images is not None:
            batch.image_inputs = row_images
        return batch.to(device)
