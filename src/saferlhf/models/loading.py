"""Loading helpers for policies and backbones: dtype choice, LoRA (peft), gradient checkpointing.

* ``dtype="auto"`` here means *the best dtype for this hardware*: bfloat16 on a CUDA device
  that supports it, float32 otherwise (CPU, MPS, old GPUs). This is **not** transformers'
  ``"auto"`` (the checkpoint's stored dtype); ask for that with ``dtype="checkpoint"``.
  ``None`` leaves the choice to transformers (float32 unless the config says otherwise).
* A *backbone* is the base model without the LM head (``LlamaModel``, ``GPT2Model``, a VLM's
  ``LlavaModel``, ...). :func:`load_backbone` takes a directory (a causal-LM checkpoint such
  as an SFT output: transformers drops ``lm_head`` and strips the ``model.`` / ``transformer.``
  prefix) or a model instance (its ``base_model``).
* LoRA goes through peft (:func:`apply_lora`); the helpers :func:`peft_clean_state_dict`
  give the backbone's plain state dict (base weights, or base + merged adapters) without
  mutating the live model for good, so a checkpoint can be written in the middle of training.
"""

from __future__ import annotations

import contextlib
import copy as _copy
import logging
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

_DTYPE_NAMES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
}


# ----------------------------------------------------------------------------- dtype
def best_dtype(device: torch.device | str | None = None) -> torch.dtype:
    """bfloat16 where the hardware has it (a CUDA device with bf16 support), else float32."""
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type != "cuda":
        return torch.float32
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def resolve_dtype(
    dtype: torch.dtype | str | None, device: torch.device | str | None = None
) -> torch.dtype | str | None:
    """Turn a user dtype into what ``from_pretrained(dtype=...)`` takes.

    ``"auto"`` -> :func:`best_dtype`; ``"checkpoint"`` -> transformers' ``"auto"`` (stored
    dtype); names like ``"bf16"``, ``"float32"``; a ``torch.dtype``; ``None`` passes through.
    """
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key == "auto":
        return best_dtype(device)
    if key == "checkpoint":
        return "auto"
    if key in _DTYPE_NAMES:
        return _DTYPE_NAMES[key]
    raise ValueError(
        f"unknown dtype {dtype!r}; use auto, checkpoint, bf16, fp16, fp32 or a torch.dtype"
    )


def _dtype_kwargs(dtype, device) -> dict[str, Any]:
    d = resolve_dtype(dtype, device)
    return {} if d is None else {"dtype": d}


@contextlib.contextmanager
def quiet_transformers(level: int = logging.ERROR) -> Iterator[None]:
    """Silence transformers' load reports inside the block (we check loading info ourselves)."""
    from transformers.utils import logging as hf_logging

    old = hf_logging.get_verbosity()
    hf_logging.set_verbosity(level)
    try:
        yield
    finally:
        hf_logging.set_verbosity(old)


# ----------------------------------------------------------------------------- peft
def is_peft_model(model: nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def unwrap_model(model: nn.Module) -> nn.Module:
    """Peel DDP / DeepSpeed / torch.compile wrappers (``.module`` / ``._orig_mod``); keeps peft."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel) or type(model).__name__ in (
            "DeepSpeedEngine",
            "FullyShardedDataParallel",
        ):
            model = model.module
        else:
            return model


def make_lora_config(
    *,
    r: int = 8,
    alpha: int | None = None,
    dropout: float = 0.0,
    target_modules: list[str] | str | None = None,
    modules_to_save: list[str] | None = None,
    task_type: str | None = None,
    **kwargs: Any,
):
    """A ``peft.LoraConfig``; ``alpha`` defaults to ``2 r``; ``target_modules=None`` lets peft
    pick its default for the architecture (``q_proj``/``v_proj`` for Llama, ``c_attn`` for
    GPT-2); ``"all-linear"`` targets every linear layer but the output layer."""
    from peft import LoraConfig

    return LoraConfig(
        r=r,
        lora_alpha=alpha if alpha is not None else 2 * r,
        lora_dropout=dropout,
        target_modules=target_modules,
        modules_to_save=modules_to_save,
        task_type=task_type,
        **kwargs,
    )


def apply_lora(model: nn.Module, config=None, **kwargs: Any) -> nn.Module:
    """Wrap ``model`` in a peft LoRA adapter (base weights frozen, adapters trainable).

    ``config`` is a ``peft.LoraConfig``, a dict of :func:`make_lora_config` arguments, or
    ``None`` (then ``kwargs`` are those arguments).
    """
    from peft import LoraConfig, get_peft_model

    if config is None or isinstance(config, dict):
        args = {**(config or {}), **kwargs}
        if "fan_in_fan_out" not in args and _has_conv1d(model):
            args["fan_in_fan_out"] = True  # GPT-2-style Conv1D stores weights transposed
        config = make_lora_config(**args)
    elif not isinstance(config, LoraConfig):
        raise TypeError(f"config must be a peft.LoraConfig or a dict, got {type(config).__name__}")
    if is_peft_model(model):
        raise ValueError("model already has a peft adapter")
    return get_peft_model(model, config)


def _has_conv1d(model: nn.Module) -> bool:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover
        return False
    return any(isinstance(m, Conv1D) for m in model.modules())


def _clean_key(key: str, adapter: str, merged: bool) -> str | None:
    """Map a peft-injected state-dict key to the plain model's key (None = drop)."""
    if ".lora_" in key or key.startswith("lora_"):
        return None
    if ".original_module." in key:
        return None if merged else key.replace(".original_module.", ".")
    tag = f".modules_to_save.{adapter}."
    if ".modules_to_save." in key:
        return key.replace(tag, ".") if (merged and tag in key) else None
    return key.replace(".base_layer.", ".")


_PEFT_PREFIX = "base_model.model."  # a PeftModel's state-dict names of the wrapped model


def _active_adapter(model: nn.Module) -> str:
    return model.active_adapter if isinstance(model.active_adapter, str) else model.active_adapters[0]


def _plain_state_dict(state_dict: dict[str, torch.Tensor], adapter: str, merged: bool,
                      to_cpu: bool) -> dict[str, torch.Tensor]:
    """A peft base model's ``state_dict`` under the plain model's names (see :func:`_clean_key`)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        nk = _clean_key(k, adapter, merged)
        if nk is not None:
            out[nk] = v.detach().to("cpu", copy=True) if to_cpu else v.detach()
    return out


def peft_base_weights(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The frozen base weights, under the plain model's names, of a peft model's full
    ``state_dict`` given by the caller (e.g. gathered from ZeRO-3 / FSDP shards): the adapter
    weights dropped, ``base_layer`` names folded back."""
    if not is_peft_model(model):
        raise TypeError("not a peft model")
    base_sd = {k.removeprefix(_PEFT_PREFIX): v for k, v in state_dict.items()}
    return _plain_state_dict(base_sd, _active_adapter(model), merged=False, to_cpu=True)


def peft_merged_weights(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The merged weights, under the plain model's names, of a LoRA peft model's full
    ``state_dict`` given by the caller (gathered from ZeRO-3 / FSDP shards, where the live
    modules hold only shards and cannot ``merge_and_unload``): for every LoRA layer of the
    active adapter, W + scaling · B A (transposed for fan-in-fan-out layers such as GPT-2's
    Conv1D), the scaling read from the live layer (it carries rank and alpha patterns, rsLoRA)."""
    adapter = _active_adapter(model)
    out = peft_base_weights(model, state_dict)
    for name, module in model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if not isinstance(lora_a, nn.ModuleDict) or adapter not in lora_a or not hasattr(module, "base_layer"):
            continue
        key = name.removeprefix(_PEFT_PREFIX) + ".weight"
        a = state_dict[f"{name}.lora_A.{adapter}.weight"].float()
        b = state_dict[f"{name}.lora_B.{adapter}.weight"].float()
        delta = (b @ a) * module.scaling[adapter]
        if getattr(module, "fan_in_fan_out", False):
            delta = delta.T
        out[key] = (out[key].float() + delta.to(out[key].device)).to(out[key].dtype)
    return out


def peft_clean_state_dict(
    model: nn.Module, *, merged: bool, to_cpu: bool = True
) -> dict[str, torch.Tensor]:
    """The plain (peft-free) state dict of a peft-wrapped model's base model.

    ``merged=False``: the frozen base weights. ``merged=True``: base + LoRA deltas of the
    active adapter(s); computed with ``merge_adapter()`` / ``unmerge_adapter()`` around a copy,
    so the live model is unchanged afterwards (up to float rounding of the unmerge, which is
    exact in float32 for practical purposes).
    """
    if not is_peft_model(model):
        raise TypeError("not a peft model")
    base = model.get_base_model()
    adapter = _active_adapter(model)

    def collect() -> dict[str, torch.Tensor]:
        return _plain_state_dict(base.state_dict(), adapter, merged, to_cpu=to_cpu or merged)

    if not merged:
        return collect()
    model.merge_adapter()
    try:
        return collect()
    finally:
        model.unmerge_adapter()


# ----------------------------------------------------------------------------- checkpointing
def set_gradient_checkpointing(
    model: nn.Module, enabled: bool = True, *, use_reentrant: bool = False
) -> None:
    """Switch gradient checkpointing on/off for a transformers model (peft-wrapped or not).

    Non-reentrant checkpointing is the default: it works with frozen embeddings (LoRA)
    without ``enable_input_require_grads``; with ``use_reentrant=True`` and a peft model the
    input embeddings are made to require grads so adapters still get gradients.
    """
    target = model.get_base_model() if is_peft_model(model) else model
    # transformers >= 5.x names it "activation checkpointing"; older releases "gradient".
    new_api = hasattr(target, "activation_checkpointing_enable")
    if enabled:
        kwargs = {"use_reentrant": use_reentrant}
        if new_api:
            target.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            target.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        if use_reentrant and is_peft_model(model) and hasattr(target, "enable_input_require_grads"):
            target.enable_input_require_grads()
        if getattr(target.config, "use_cache", False):
            target.config.use_cache = False
    elif new_api:
        target.activation_checkpointing_disable()
    else:
        target.gradient_checkpointing_disable()


def is_checkpointing(model: nn.Module) -> bool:
    """Whether gradient (activation) checkpointing is on."""
    target = model.get_base_model() if is_peft_model(model) else model
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(type(target), name):
            return bool(getattr(target, name))
    return False


# ----------------------------------------------------------------------------- models
def freeze(model: nn.Module) -> nn.Module:
    """``requires_grad_(False)`` on every parameter, ``eval()``; returns the model."""
    model.requires_grad_(False)
    return model.eval()


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def load_tokenizer(
    path: str | os.PathLike, *, padding_side: str | None = None, trust_remote_code: bool = False
):
    """``AutoTokenizer`` (or ``AutoProcessor`` for a VLM dir with a processor config) from ``path``.

    A missing pad token falls back to EOS (generation and score models need one).
    """
    from transformers import AutoProcessor

    from saferlhf.processing import load_tokenizer as load_text_tokenizer
    from saferlhf.processing import prepare_tokenizer

    path = str(path)
    if os.path.isfile(os.path.join(path, "processor_config.json")) or os.path.isfile(
        os.path.join(path, "preprocessor_config.json")
    ):
        proc = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        prepare_tokenizer(getattr(proc, "tokenizer", proc), padding_side=padding_side)
        return proc
    return load_text_tokenizer(path, padding_side=padding_side, trust_remote_code=trust_remote_code)


def _is_vlm_config(config) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES and hasattr(
        config, "vision_config"
    )


def load_causal_lm(
    path: str | os.PathLike,
    *,
    dtype: torch.dtype | str | None = "auto",
    device: torch.device | str | None = None,
    lora=None,
    gradient_checkpointing: bool = False,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """A policy from a directory: ``AutoModelForCausalLM``, or ``AutoModelForImageTextToText``
    when the config is a vision-language model. A dir holding a peft adapter
    (``adapter_config.json``) is loaded onto its base. Optional LoRA (``lora``: LoraConfig or
    dict, see :func:`apply_lora`) and gradient checkpointing."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    path = str(path)
    extra = dict(kwargs, **_dtype_kwargs(dtype, device))
    if attn_implementation is not None:
        extra["attn_implementation"] = attn_implementation
    if os.path.isfile(os.path.join(path, "adapter_config.json")):
        from peft import PeftConfig, PeftModel

        pcfg = PeftConfig.from_pretrained(path)
        base = load_causal_lm(
            pcfg.base_model_name_or_path,
            dtype=dtype,
            device=device,
            trust_remote_code=trust_remote_code,
            attn_implementation=attn_implementation,
            **kwargs,
        )
        model = PeftModel.from_pretrained(base, path, is_trainable=True)
    else:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        cls = AutoModelForImageTextToText if _is_vlm_config(config) else AutoModelForCausalLM
        model = cls.from_pretrained(path, trust_remote_code=trust_remote_code, **extra)
    if device is not None:
        model.to(device)
    if lora is not None:
        model = apply_lora(model, lora)
    if gradient_checkpointing:
        set_gradient_checkpointing(model, True)
    return model


def base_model_of(model: nn.Module) -> nn.Module:
    """The backbone of a model with a head: ``LlamaForCausalLM -> LlamaModel``,
    ``GPT2LMHeadModel -> GPT2Model``, ``LlavaForConditionalGeneration -> LlavaModel``.
    A base model is returned as is. Not for peft models (unwrap first)."""
    if is_peft_model(model):
        raise ValueError("base_model_of: got a peft model; merge or unwrap it first")
    inner = getattr(model, "base_model", model)
    return inner if inner is not None else model


def load_backbone(
    path_or_model: str | os.PathLike | nn.Module,
    *,
    dtype: torch.dtype | str | None = "auto",
    device: torch.device | str | None = None,
    copy: bool = True,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """A backbone (base model, no LM head) from a directory or a model instance.

    A directory is loaded with ``AutoModel`` (from a causal-LM checkpoint this drops the LM
    head and strips the base-model prefix; missing backbone weights are an error); a
    directory holding a peft adapter is loaded onto its base and merged. A model
    instance gives its ``base_model``, deep-copied unless ``copy=False`` (a critic built from
    the live policy must not share its weights). A peft model instance is merged into a copy.
    """
    if isinstance(path_or_model, nn.Module):
        model = path_or_model
        if is_peft_model(model):
            model = _copy.deepcopy(model).merge_and_unload()
            copy = False
        bb = base_model_of(model)
        if copy:
            bb = _copy.deepcopy(bb)
        d = resolve_dtype(dtype, device)
        if isinstance(d, torch.dtype):
            bb.to(d)
        if device is not None:
            bb.to(device)
        return bb

    from transformers import AutoConfig, AutoModel

    path = str(path_or_model)
    if os.path.isfile(os.path.join(path, "adapter_config.json")):  # a LoRA-adapter checkpoint
        lm = load_causal_lm(
            path,
            dtype=dtype,
            device=device,
            trust_remote_code=trust_remote_code,
            attn_implementation=attn_implementation,
            **kwargs,
        )
        return base_model_of(lm.merge_and_unload())
    extra = dict(kwargs, **_dtype_kwargs(dtype, device))
    if attn_implementation is not None:
        extra["attn_implementation"] = attn_implementation
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    with quiet_transformers():
        bb, info = AutoModel.from_pretrained(
            path,
            config=config,
            trust_remote_code=trust_remote_code,
            output_loading_info=True,
            **extra,
        )
    missing = sorted(info.get("missing_keys", []))
    if missing:
        raise ValueError(
            f"backbone weights missing from {path}: {missing[:8]}{' ...' if len(missing) > 8 else ''}"
        )
    if device is not None:
        bb.to(device)
    return bb
