"""Policy log-probs, the reference model, and policy loading (with optional LoRA).

Conventions that decide correctness (DESIGN §5), stated here and tested in
``tests/test_policy_logprobs.py``:

* Log-probs used for PPO ratios, KL and entropy come from ``logits / temperature`` of a plain
  forward pass, computed by :func:`forward_logprobs` in exactly the same way at rollout time
  (old / reference log-probs) and at training time. They are never taken from ``generate``'s
  processed scores (top-p, top-k and repetition penalty change the distribution).
* Alignment: for a batch laid out as ``[left-padded prompt (P) | response (R)]``,
  ``logp[:, t]`` is the log-prob of response token ``t`` — the token at column ``P + t`` —
  given everything before it; it is read from the logits at column ``P − 1 + t``. So
  ``logp[:, 0]`` scores the first generated token from the last prompt position, and
  ``logp[:, R − 1]`` scores the last response column. Values and per-token rewards use the
  same indexing (V[t] belongs to the state that produced response token t).
* Position ids follow the padding: ``position_ids = cumsum(attention_mask) − 1`` clamped at 0,
  so a left-padded row is computed exactly as the same row unpadded (this is what HF
  ``generate`` does too), and on the first PPO epoch the ratio is 1 for every token.
* Dropout must be off for the ratio to be 1: :func:`load_policy` / :func:`prepare_policy`
  call :func:`disable_dropout` by default (GPT-2 style configs default to 0.1 dropout).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from saferlhf.models.loading import (
    apply_lora,
    load_causal_lm,
    resolve_dtype,
    set_gradient_checkpointing,
)
from saferlhf.models.loading import is_peft_model as _is_peft_instance
from saferlhf.models.loading import unwrap_model as _unwrap_known

# --------------------------------------------------------------------------- wrappers / modes

# Wrappers recognised by class name too (subclasses / lookalikes, e.g. accelerate's or a test's).
_WRAPPER_NAMES = ("DistributedDataParallel", "DataParallel", "DeepSpeedEngine")


def unwrap_model(
    model: nn.Module, unwrap: Callable[[nn.Module], nn.Module] | None = None
) -> nn.Module:
    """The bare model under accelerate / DDP / DeepSpeed / ``torch.compile`` wrappers.

    ``unwrap``: e.g. ``accelerator.unwrap_model``; applied first when given. Then wrappers are
    peeled by type (:func:`saferlhf.models.loading.unwrap_model`, plus ``nn.DataParallel``).
    A peft model is *not* unwrapped: it is the policy (its adapters matter).
    """
    if unwrap is not None:
        model = unwrap(model)
    for _ in range(8):
        model = _unwrap_known(model)
        if isinstance(model, nn.DataParallel) or (
            type(model).__name__ in _WRAPPER_NAMES
            and isinstance(getattr(model, "module", None), nn.Module)
        ):
            model = model.module
        else:
            break
    return model


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode, then restore each module's own flag exactly."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def disable_dropout(model: nn.Module) -> nn.Module:
    """Set every dropout probability in ``model`` to 0 (in place), so that train-mode forward
    passes are deterministic and the PPO ratio is exactly 1 on the first epoch.

    Covers ``nn.Dropout*`` modules and the float ``attention_dropout`` / ``dropout``
    attributes that attention implementations read at call time. The config is not changed.
    """
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.p = 0.0
        for attr in ("attention_dropout", "dropout", "attn_dropout", "dropout_p"):
            if isinstance(getattr(m, attr, None), float):
                setattr(m, attr, 0.0)
    return model


def _base_forward_model(model: nn.Module) -> nn.Module:
    """The transformers model whose ``forward`` signature tells which kwargs are accepted."""
    m = unwrap_model(model)
    if hasattr(m, "get_base_model"):  # peft
        m = m.get_base_model()
    return m


_KWARG_CACHE: dict[tuple[type, str], bool] = {}


def _accepts_kwarg(model: nn.Module, name: str) -> bool:
    m = _base_forward_model(model)
    key = (type(m), name)
    if key not in _KWARG_CACHE:
        try:
            params = inspect.signature(m.forward).parameters
            _KWARG_CACHE[key] = name in params
        except (TypeError, ValueError):
            _KWARG_CACHE[key] = False
    return _KWARG_CACHE[key]


# --------------------------------------------------------------------------- log-probs


def position_ids_from_attention_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """``cumsum(attention_mask) − 1`` clamped at 0: position 0 at each row's first real token,
    whatever the left padding (padding positions get 0; they are masked anyway)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def logprobs_from_logits(
    logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
    *,
    return_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``log_softmax(logits / temperature)`` gathered at ``labels`` (computed in float32).

    logits: (..., V) already aligned with labels (...). Entropy (optional) is that of the same
    tempered distribution: ``H = −Σ p log p``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 for log-probs, got {temperature}")
    scaled = logits.float()
    if temperature != 1.0:
        scaled = scaled / temperature
    lse = torch.logsumexp(scaled, dim=-1)
    logp = scaled.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1) - lse
    if not return_entropy:
        return logp
    log_p_all = scaled - lse.unsqueeze(-1)
    p_all = log_p_all.exp()
    entropy = -torch.where(p_all > 0, p_all * log_p_all, torch.zeros_like(p_all)).sum(-1)
    return logp, entropy


def _split_kwargs(kwargs: dict[str, Any], batch: int, start: int, stop: int) -> dict[str, Any]:
    out = {}
    for k, v in kwargs.items():
        if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == batch:
            out[k] = v[start:stop]
        else:
            out[k] = v
    return out


def forward_logprobs(
    model: nn.Module,
    sequences: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    prompt_length: int,
    temperature: float = 1.0,
    return_entropy: bool = False,
    micro_batch_size: int | None = None,
    response_mask: torch.Tensor | None = None,
    image_inputs: Any = None,
    **model_kwargs: Any,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs (B, R) of the response tokens ``sequences[:, P:]``.

    ``logp[:, t] = log softmax(logits[:, P − 1 + t] / temperature)[sequences[:, P + t]]``:
    the logits at column ``P − 1 + t`` predict the token at column ``P + t``. The forward pass
    uses ``position_ids = cumsum(attention_mask) − 1`` (clamped ≥ 0), so left padding does not
    shift positions; pass ``position_ids=...`` explicitly in ``model_kwargs`` to override (e.g.
    ``position_ids=None`` for VLMs that build their own multimodal positions).

    Gradients flow when called with grad enabled (training); wrap in ``torch.no_grad()`` for
    old / reference log-probs. ``micro_batch_size`` splits the batch (results concatenated);
    extra tensor kwargs (``pixel_values`` …) whose first dim is B are split with it, others are
    passed whole to every micro-batch. ``response_mask`` (B, R), when given, zeroes the values
    at padding columns (otherwise they are the finite log-probs of the pad tokens there).

    Vision-language models: pass the batch's images as ``image_inputs`` (a
    :class:`saferlhf.models.tiny_vlm.ImageInputs`, one entry per row) rather than raw
    ``pixel_values``: each micro-batch gets the vision inputs of its own rows
    (``image_inputs.select``), which is right for every layout (Qwen2-VL's ``pixel_values`` are
    patches, not rows). Row-aligned extras (``mm_token_type_ids``) are split with the rows.
    ``processor.vision_logprob_kwargs(sequences, image_inputs)`` builds these kwargs, with
    ``position_ids=None`` for models that build their own (M-RoPE). Raw ``pixel_values`` are
    accepted only when the batch is not split (there is no way to tell which rows they belong to).

    Returns ``logp`` or, with ``return_entropy``, ``(logp, entropy)``, both (B, R) float32.
    """
    if sequences.dim() != 2 or sequences.shape != attention_mask.shape:
        raise ValueError(
            f"sequences {tuple(sequences.shape)} and attention_mask {tuple(attention_mask.shape)} must be equal (B, L)"
        )
    B, L = sequences.shape
    P = int(prompt_length)
    R = L - P
    if P < 1 or R < 1:
        raise ValueError(f"need prompt_length >= 1 and at least one response column (P={P}, L={L})")
    if temperature <= 0:
        raise ValueError(
            f"temperature must be > 0 for log-probs (greedy rollouts: use 1.0), got {temperature}"
        )
    explicit_pos = "position_ids" in model_kwargs
    explicit_pos_value = model_kwargs.pop("position_ids", None)
    keep = _accepts_kwarg(model, "logits_to_keep")
    mb = micro_batch_size or B
    if image_inputs is not None and "pixel_values" in model_kwargs:
        raise ValueError("pass the images either as image_inputs= or as pixel_values=, not both")
    if mb < B and "pixel_values" in model_kwargs:
        raise ValueError(
            "micro_batch_size splits the batch but pixel_values cannot be split by rows; pass the "
            "images as image_inputs= (ImageInputs) instead")
    if image_inputs is not None and len(image_inputs.images_per_row) != B:
        raise ValueError(f"image_inputs has {len(image_inputs.images_per_row)} rows for a batch of {B}")

    logps, ents = [], []
    for s in range(0, B, mb):
        e = min(B, s + mb)
        ids, mask = sequences[s:e], attention_mask[s:e]
        kw = _split_kwargs(model_kwargs, B, s, e)
        if image_inputs is not None:
            kw.update((image_inputs if (s == 0 and e == B) else image_inputs.select(range(s, e))).kwargs())
        if explicit_pos:
            pos = (
                explicit_pos_value[s:e]
                if isinstance(explicit_pos_value, torch.Tensor) and explicit_pos_value.dim() == 2
                else explicit_pos_value
            )
        else:
            pos = position_ids_from_attention_mask(mask)
        if pos is not None:
            kw["position_ids"] = pos
        if keep:  # only columns P-1 .. L-1 go through the LM head (the last is dropped below)
            kw["logits_to_keep"] = R + 1
        out = model(input_ids=ids, attention_mask=mask, use_cache=False, **kw)
        logits = out.logits if hasattr(out, "logits") else out[0]
        logits = logits[:, -(R + 1) : -1, :]  # columns P-1 .. L-2 predict tokens P .. L-1
        res = logprobs_from_logits(logits, ids[:, P:], temperature, return_entropy=return_entropy)
        if return_entropy:
            logps.append(res[0])
            ents.append(res[1])
        else:
            logps.append(res)
    logp = torch.cat(logps, 0)
    ent = torch.cat(ents, 0) if return_entropy else None
    if response_mask is not None:
        keep_mask = response_mask.bool()
        logp = logp.masked_fill(~keep_mask, 0.0)
        if ent is not None:
            ent = ent.masked_fill(~keep_mask, 0.0)
    return (logp, ent) if return_entropy else logp


# --------------------------------------------------------------------------- LoRA / loading


@dataclass
class LoraSpec:
    """LoRA settings for a policy (peft). ``target_modules="all-linear"`` adapts every linear
    layer except the output head; ``dropout`` defaults to 0 so the PPO ratio starts at 1.
    ``extra``: further ``peft.LoraConfig`` arguments."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"
    modules_to_save: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Arguments of :func:`saferlhf.models.loading.make_lora_config`."""
        d = asdict(self)
        extra = d.pop("extra")
        return {**d, "task_type": "CAUSAL_LM", **extra}

    def to_peft_config(self):
        from saferlhf.models.loading import make_lora_config

        return make_lora_config(**self.to_dict())


def is_peft_model(model: nn.Module) -> bool:
    """True when ``model`` (after unwrapping) is a peft model (its adapter can be disabled)."""
    return _is_peft_instance(unwrap_model(model))


def _lora_arg(lora: LoraSpec | dict | Any | None):
    return lora.to_dict() if isinstance(lora, LoraSpec) else lora


def prepare_policy(
    model: nn.Module,
    lora: LoraSpec | dict | Any | None = None,
    *,
    gradient_checkpointing: bool = False,
    no_dropout: bool = True,
) -> nn.Module:
    """Make a loaded causal LM a policy: LoRA (peft) when asked, gradient checkpointing
    (non-reentrant), dropout off (default; see :func:`disable_dropout`)."""
    if lora is not None:
        model = apply_lora(model, _lora_arg(lora))
    if gradient_checkpointing:
        set_gradient_checkpointing(model, True)
    if no_dropout:
        disable_dropout(model)
    return model


def load_policy(
    path: str | Path,
    lora: LoraSpec | dict | Any | None = None,
    dtype: str | torch.dtype | None = None,
    gradient_checkpointing: bool = False,
    *,
    no_dropout: bool = True,
    device: str | torch.device | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Load a policy: ``AutoModelForCausalLM`` (or the VLM class for a VLM config) from a
    ``save_pretrained`` dir; a dir holding a peft adapter is loaded as base + trainable
    adapter. ``lora`` (a :class:`LoraSpec`, a dict or a ``peft.LoraConfig``) puts a fresh LoRA
    adapter on it. ``dtype``: None = transformers' default (float32 — keep trainable weights
    in float32), or ``"bf16"``/``"auto"``/… as in :func:`saferlhf.models.loading.resolve_dtype`.
    Dropout is switched off unless ``no_dropout=False``. Other kwargs go to
    :func:`saferlhf.models.loading.load_causal_lm`.
    """
    model = load_causal_lm(path, dtype=dtype, device=device, lora=None, **kwargs)
    return prepare_policy(
        model, lora, gradient_checkpointing=gradient_checkpointing, no_dropout=no_dropout
    )


# --------------------------------------------------------------------------- reference model


def _param_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        return torch.device("cpu")


class ReferenceModel:
    """Frozen reference policy π_ref for KL terms.

    Modes (``.mode``):

    * ``"disabled_adapter"`` — the policy is a peft (LoRA) model: reference log-probs are the
      policy module's own forward under ``model.disable_adapter()``. No second copy of the
      weights exists (:meth:`extra_parameter_count` is 0).
    * ``"copy"`` — otherwise: a deep copy of the (unwrapped) policy, ``requires_grad=False``,
      eval mode, optionally cast to ``dtype`` (e.g. ``torch.bfloat16``).
    * ``"separate"`` — an explicitly given reference model (e.g. loaded from another path).

    Make it *before* training starts (the copy snapshots the current weights). Reference
    log-probs are computed in eval mode under ``torch.no_grad()`` with the same
    :func:`forward_logprobs` as the policy's.
    """

    def __init__(
        self,
        policy: nn.Module,
        *,
        ref_model: nn.Module | None = None,
        dtype: str | torch.dtype | None = None,
        share_lora_base: bool = True,
        unwrap: Callable[[nn.Module], nn.Module] | None = None,
    ) -> None:
        base = unwrap_model(policy, unwrap)
        dt = resolve_dtype(dtype, _param_device(base))
        if ref_model is not None:
            self.mode = "separate"
            self._module = self._freeze(unwrap_model(ref_model), dt)
        elif share_lora_base and is_peft_model(base):
            self.mode = "disabled_adapter"
            self._module = base
        else:
            self.mode = "copy"
            self._module = self._freeze(copy.deepcopy(base), dt)
        self._policy = base

    @staticmethod
    def _freeze(m: nn.Module, dtype: torch.dtype | str | None) -> nn.Module:
        if isinstance(dtype, torch.dtype):
            m = m.to(dtype)
        m.requires_grad_(False)
        m.eval()
        return m

    @classmethod
    def load(
        cls,
        path: str | Path,
        policy: nn.Module,
        *,
        dtype: str | torch.dtype | None = None,
        **kw: Any,
    ) -> ReferenceModel:
        """A separate reference model loaded from ``path`` (frozen, eval)."""
        return cls(policy, ref_model=load_policy(path, None, dtype, **kw))

    @property
    def module(self) -> nn.Module:
        """The module whose forward gives reference log-probs (the policy itself in
        ``disabled_adapter`` mode)."""
        return self._module

    def extra_parameter_count(self) -> int:
        """Parameters held by the reference beyond the policy's own (0 in LoRA mode)."""
        policy_ptrs = {p.data_ptr() for p in self._policy.parameters()}
        return sum(p.numel() for p in self._module.parameters() if p.data_ptr() not in policy_ptrs)

    @contextmanager
    def _context(self) -> Iterator[nn.Module]:
        with torch.no_grad(), eval_mode(self._module):
            if self.mode == "disabled_adapter":
                with self._module.disable_adapter():
                    yield self._module
            else:
                yield self._module

    def logprobs(self, sequences: torch.Tensor, attention_mask: torch.Tensor,
                 **kwargs: Any) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Reference log-probs (B, R): :func:`forward_logprobs` with the same keyword arguments
        (``prompt_length``, ``temperature`` …), on the reference's device."""
        with self._context() as m:
            device = next(m.parameters()).device
            moved = {k: (v.to(device) if isinstance(v, torch.Tensor) or hasattr(v, "select") else v)
                     for k, v in kwargs.items()}
            return forward_logprobs(m, sequences.to(device), attention_mask.to(device), **moved)

    __call__ = logprobs
