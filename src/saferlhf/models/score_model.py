"""ScoreModel: one reward / cost / critic model for every Hugging Face backbone (DESIGN §4).

    scores     = head(backbone(**inputs).last_hidden_state)        (B, L, D)  every position
    end_scores = scores[b, end_index[b]]                             (B, D)
    end_index  = last position where attention_mask == 1            (B,)   left or right padding

The backbone is any base model called with ``**inputs`` (``LlamaModel``, ``GPT2Model``, a
VLM's base model with ``pixel_values`` ...); extra keyword arguments are forwarded untouched.
Position ids follow the padding (``cumsum(mask) − 1``, clamped at 0) for backbones that take
them, so a left-padded sequence scores exactly as the unpadded one; backbones with
multimodal rotary positions (Qwen2-VL family) compute their own and get none.

Normalisation (``ScoreNormalizer``): reward affine ``(x − μ)/σ``, cost scale-only ``x/σ``,
critic none. The statistics are updated from the (raw) end scores on every forward pass in
training mode (``update_normalizer``), saved with the checkpoint, and applied only when
``do_normalize`` is on — to ``end_scores`` **and** to the per-token ``scores`` (the same map,
so a per-token score at the end position always equals the end score). Switch it at load time
with ``from_pretrained(dir, normalize=True|False)`` or later with :meth:`set_normalize`.

Why ``nn.Module`` and not a ``PreTrainedModel`` subclass: the backbone is a *given* model of
any architecture (text or VLM, possibly peft-wrapped); a PreTrainedModel subclass would need
its own config class mirroring every backbone config and per-architecture weight prefixes.
Composition keeps one implementation, lets the backbone save itself in its own format (the
checkpoint dir is loadable with ``AutoModel.from_pretrained(dir)``), and the score head and
normaliser sit beside it. ``model.config`` is the backbone's HF config (what accelerate /
DeepSpeed look for); ours is ``model.score_config``.

Checkpoint layout (``save_pretrained``)::

    config.json, model.safetensors (or shards + index)   the backbone (AutoModel-loadable; config
                                                         architectures [SaferlhfScoreModel] and (1, 1)
                                                         score.weight / classifier.weight guard tensors
                                                         make AutoModelForSequenceClassification fail
                                                         loudly: `saferlhf export` writes that format)
    score_config.json                                    ScoreConfig (type, dim, normaliser, template …)
    score_head.safetensors                               score_head.{weight,bias}, normalizer.{mean,var,count}
    adapter/                                             peft adapter (LoRA backbone saved unmerged)
    tokenizer files                                      when a tokenizer is given

LoRA: ``save_pretrained(merge_lora=False)`` (default) writes the *unmerged* base weights plus
``adapter/`` — lossless, trainable again, the adapter can be switched off; with
``save_base=False`` only the adapter is written and the base is re-read from
``score_config.base_model_path`` (the directory the backbone came from). ``merge_lora=True``
writes base + merged deltas: a plain checkpoint, no peft needed at load time. Neither changes
the live model. ``from_pretrained(dir, merge_lora=True)`` merges on load.

HF ``*ForSequenceClassification`` folders (``num_labels`` = score dim, with their head) load
through ``from_pretrained`` too, and :meth:`ScoreModel.from_sequence_classification` wraps an
in-memory one, sharing its weights (``saferlhf.models.export``; hub ids resolve from the cache).

PKU's released score models (``beaver-7b-v1.0-reward``/``-cost``, ``v3.0`` …; config.json with
``architectures: [LlamaForScore]``, ``score_type``, ``score_dim``, ``score_bias`` (older: ``bias``),
``do_normalize``, ``normalizer_type``, ``mean``, ``var``, ``momentum``; weights ``model.*``,
``score_head.*`` and maybe ``normalizer.*``; sharded or not, safetensors or .bin) load through
:func:`load_pku_score_model`, which ``from_pretrained`` calls when it sees that layout.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import nn
from transformers.utils import ModelOutput

from ..data.templates import Template
from .loading import (
    apply_lora,
    is_checkpointing,
    is_peft_model,
    load_backbone,
    peft_base_weights,
    peft_clean_state_dict,
    quiet_transformers,
    set_gradient_checkpointing,
)
from .normalizer import (
    NORMALIZER_KINDS,
    SCORE_TYPES,
    ScoreNormalizer,
    normalize_function_for,
    normalizer_kind_from_pku,
)

logger = logging.getLogger(__name__)

SCORE_CONFIG_NAME = "score_config.json"
SCORE_HEAD_NAME = "score_head.safetensors"
ADAPTER_DIR = "adapter"
FORMAT_VERSION = 1

# Backbones whose rotary positions are multimodal (3-D): they build position ids themselves.
_OWN_POSITION_MODEL_TYPES = frozenset(
    {"qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen2_5_omni", "glm4v", "glm4v_moe"}
)
# Config keys PKU adds to the backbone config; removed from our backbone's config on load.
_PKU_CONFIG_KEYS = (
    "score_type",
    "score_dim",
    "score_bias",
    "bias",
    "do_normalize",
    "normalizer_type",
    "mean",
    "var",
    "momentum",
)


# ----------------------------------------------------------------------------- config / output
@dataclass
class ScoreConfig:
    """What a score checkpoint needs besides the backbone (saved as ``score_config.json``).

    ``normalizer=None`` picks ``ema`` for reward/cost and ``none`` for critics;
    ``position_ids``: ``auto`` (follow the padding when the backbone takes position ids and
    does not build multimodal ones) | ``always`` | ``never``.
    """

    score_type: str = "reward"
    score_dim: int = 1
    score_bias: bool = True
    normalizer: str | None = None
    momentum: float = 0.9
    do_normalize: bool = False
    update_normalizer: bool = True
    template: dict[str, Any] | None = None
    backbone_model_type: str | None = None
    backbone_class: str | None = None
    base_model_path: str | None = None
    position_ids: str = "auto"
    lora: dict[str, Any] | None = None
    # informative copies of the statistics (score_head.safetensors is authoritative)
    stats: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.score_type not in SCORE_TYPES:
            raise ValueError(f"score_type must be one of {SCORE_TYPES}, got {self.score_type!r}")
        if self.normalizer is None:
            self.normalizer = "none" if self.score_type == "critic" else "ema"
        self.normalizer = normalizer_kind_from_pku(self.normalizer)
        if self.normalizer not in NORMALIZER_KINDS:
            raise ValueError(
                f"normalizer must be one of {NORMALIZER_KINDS}, got {self.normalizer!r}"
            )
        if self.position_ids not in ("auto", "always", "never"):
            raise ValueError(f"position_ids must be auto|always|never, got {self.position_ids!r}")
        if int(self.score_dim) < 1:
            raise ValueError(f"score_dim must be >= 1, got {self.score_dim}")
        self.score_dim = int(self.score_dim)

    @property
    def normalize_function(self) -> str:
        return normalize_function_for(self.score_type)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScoreConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            logger.warning("score config: ignoring unknown keys %s", unknown)
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class ScoreModelOutput(ModelOutput):
    """``scores`` (B, L, D) float32 per token; ``end_scores`` (B, D) at ``end_index`` (B,);
    hidden states of the last layer (B, L, E) and at the end token (B, E)."""

    scores: torch.Tensor | None = None
    end_scores: torch.Tensor | None = None
    end_index: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    end_last_hidden_state: torch.Tensor | None = None

    @property
    def scores_1d(self) -> torch.Tensor:
        """(B, L) per-token scores of a ``score_dim=1`` model (critic values)."""
        return squeeze_score_dim(self.scores)

    @property
    def end_scores_1d(self) -> torch.Tensor:
        """(B,) end scores of a ``score_dim=1`` model."""
        return squeeze_score_dim(self.end_scores)


def squeeze_score_dim(x: torch.Tensor) -> torch.Tensor:
    """Drop the trailing score dimension of size 1: (B, L, 1) -> (B, L), (B, 1) -> (B,)."""
    if x.shape[-1] != 1:
        raise ValueError(f"squeeze_score_dim needs score_dim == 1, got shape {tuple(x.shape)}")
    return x.squeeze(-1)


def end_indices(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last position with mask == 1 in each row (left or right padding).

    A row with no real token gets index 0.
    """
    mask = attention_mask.to(torch.bool)
    L = mask.shape[-1]
    pos = torch.arange(L, device=mask.device).expand_as(mask)
    return torch.where(mask, pos, torch.zeros_like(pos)).amax(dim=-1)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """``cumsum(mask) − 1`` clamped at 0: real tokens get 0, 1, 2, … whatever the padding side."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def _hidden_size(config) -> int:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("hidden_size", "n_embd", "d_model", "dim"):
        value = getattr(text, name, None)
        if isinstance(value, int):
            return value
    raise ValueError(f"cannot find the hidden size in {type(config).__name__}")


def builds_own_positions(config) -> bool:
    """Whether a backbone builds its own (3-D, multimodal rotary) position ids: a known model
    type, or an ``mrope_section`` in its (text) config's rope settings. Such a backbone must
    never be given 1-D ``position_ids``."""
    if getattr(config, "model_type", None) in _OWN_POSITION_MODEL_TYPES:
        return True
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for cfg in (config, text):
        for name in ("rope_scaling", "rope_parameters"):
            rope = getattr(cfg, name, None)
            if isinstance(rope, dict) and "mrope_section" in rope:
                return True
    return False


# ----------------------------------------------------------------------------- the model
class ScoreModel(nn.Module):
    """Backbone + ``Linear(hidden, score_dim, bias=score_bias)`` on every position + normaliser.

    Build one with :meth:`from_backbone` (from an SFT causal-LM dir or any backbone / model
    instance) or :meth:`from_pretrained` (our checkpoints and PKU's). The constructor takes a
    ready backbone; ``config`` fields can also be given as keyword overrides.
    """

    def __init__(
        self,
        backbone: nn.Module,
        config: ScoreConfig | None = None,
        *,
        template: Template | dict | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__()
        cfg = ScoreConfig.from_dict({**(config.to_dict() if config else {}), **overrides})
        if template is not None:
            cfg.template = template.to_dict() if isinstance(template, Template) else dict(template)
        self.backbone = backbone
        self.score_config = cfg
        inner = self._inner_backbone()
        cfg.backbone_model_type = getattr(inner.config, "model_type", None)
        cfg.backbone_class = type(inner).__name__

        hidden = _hidden_size(inner.config)
        param = next(inner.parameters(), None)
        head_dtype = (
            param.dtype if param is not None and param.is_floating_point() else torch.float32
        )
        head_device = param.device if param is not None else None
        self.score_head = nn.Linear(
            hidden, cfg.score_dim, bias=cfg.score_bias, device=head_device, dtype=head_dtype
        )
        with torch.no_grad():
            nn.init.normal_(self.score_head.weight, std=1.0 / math.sqrt(hidden + 1))
            if self.score_head.bias is not None:
                self.score_head.bias.zero_()
        self.normalizer = ScoreNormalizer(
            cfg.score_dim,
            kind=cfg.normalizer,
            function=cfg.normalize_function,
            momentum=cfg.momentum,
        )
        if head_device is not None:
            self.normalizer.to(head_device)
        self._set_forward_signature()

    # --- introspection ----------------------------------------------------------------
    def _inner_backbone(self) -> nn.Module:
        """The transformers model under a peft wrapper (the backbone itself otherwise)."""
        return self.backbone.get_base_model() if is_peft_model(self.backbone) else self.backbone

    def _set_forward_signature(self) -> None:
        inner = self._inner_backbone()
        params = inspect.signature(inner.forward).parameters
        self._accepts = set(params)
        cfg = inner.config
        mode = self.score_config.position_ids
        own = builds_own_positions(cfg)
        self._pass_position_ids = "position_ids" in params and (
            mode == "always" or (mode == "auto" and not own)
        )

    @property
    def config(self):
        """The backbone's Hugging Face config (ours is :attr:`score_config`)."""
        return self._inner_backbone().config

    @property
    def template(self) -> Template | None:
        t = self.score_config.template
        return Template.from_dict(t) if t is not None else None

    @template.setter
    def template(self, value: Template | dict | None) -> None:
        self.score_config.template = value.to_dict() if isinstance(value, Template) else value

    @property
    def score_type(self) -> str:
        return self.score_config.score_type

    @property
    def score_dim(self) -> int:
        return self.score_config.score_dim

    @property
    def do_normalize(self) -> bool:
        return self.score_config.do_normalize

    @property
    def is_lora(self) -> bool:
        return is_peft_model(self.backbone)

    @property
    def device(self) -> torch.device:
        return self.score_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.score_head.weight.dtype

    # --- switches ---------------------------------------------------------------------
    def set_normalize(self, enabled: bool = True) -> ScoreModel:
        """Return normalised (``True``) or raw (``False``) scores from now on."""
        self.score_config.do_normalize = bool(enabled)
        return self

    def gradient_checkpointing_enable(
        self, gradient_checkpointing_kwargs: dict | None = None
    ) -> None:
        kw = gradient_checkpointing_kwargs or {}
        set_gradient_checkpointing(
            self.backbone, True, use_reentrant=kw.get("use_reentrant", False)
        )

    def gradient_checkpointing_disable(self) -> None:
        set_gradient_checkpointing(self.backbone, False)

    @property
    def is_gradient_checkpointing(self) -> bool:
        return is_checkpointing(self.backbone)

    def apply_lora(self, config=None, **kwargs: Any) -> ScoreModel:
        """Wrap the backbone in a peft LoRA adapter (see :func:`loading.apply_lora`); the score
        head stays fully trainable, the base weights are frozen."""
        self.backbone = apply_lora(self.backbone, config, **kwargs)
        self.score_head.requires_grad_(True)
        self._set_forward_signature()
        return self

    def merge_lora(self) -> ScoreModel:
        """Merge the LoRA adapter into the backbone weights in place (drops peft)."""
        if self.is_lora:
            self.backbone = self.backbone.merge_and_unload()
            self._set_forward_signature()
        return self

    def get_input_embeddings(self) -> nn.Module:
        return self._inner_backbone().get_input_embeddings()

    # --- forward ----------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> ScoreModelOutput:
        """Score every position; extra kwargs (``pixel_values``, ``inputs_embeds`` …) go to the
        backbone. Without an attention mask every position is real (end index L − 1)."""
        if attention_mask is None:
            ref = input_ids if input_ids is not None else kwargs.get("inputs_embeds")
            if ref is None:
                raise ValueError("ScoreModel.forward needs input_ids or inputs_embeds")
            attention_mask = torch.ones(ref.shape[:2], dtype=torch.long, device=ref.device)
        if position_ids is None and self._pass_position_ids:
            position_ids = position_ids_from_mask(attention_mask)
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        if "use_cache" in self._accepts and "use_cache" not in kwargs:
            kwargs["use_cache"] = False
        if "return_dict" in self._accepts:
            kwargs.setdefault("return_dict", True)
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

        scores = self.score_head(hidden.to(self.score_head.weight.dtype)).float()  # (B, L, D)
        end_index = end_indices(attention_mask).to(scores.device)  # (B,)
        rows = torch.arange(scores.shape[0], device=scores.device)
        end_scores = scores[rows, end_index]  # (B, D)
        end_hidden = hidden[rows.to(hidden.device), end_index.to(hidden.device)]

        cfg = self.score_config
        if self.training and cfg.update_normalizer and cfg.normalize_function != "identity":
            self.normalizer.update(end_scores.detach())
        if cfg.do_normalize:
            scores = self.normalizer.normalize(scores)
            end_scores = self.normalizer.normalize(end_scores)
        return ScoreModelOutput(
            scores=scores,
            end_scores=end_scores,
            end_index=end_index,
            last_hidden_state=hidden,
            end_last_hidden_state=end_hidden,
        )

    @torch.no_grad()
    def score(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any
    ) -> torch.Tensor:
        """End scores (B, D) without gradients (eval helper; the train/eval mode is left as is)."""
        return self(input_ids=input_ids, attention_mask=attention_mask, **kwargs).end_scores

    # --- construction -----------------------------------------------------------------
    @classmethod
    def _backbone_at(cls, source, template, *, dtype, device, trust_remote_code: bool,
                     attn_implementation: str | None):
        """``(backbone, template, base_path)`` of a folder or hub id: a score model's backbone
        (LoRA merged; ``base_path`` None then, no folder holds it as is) or a language model's
        base model. The template defaults to the one saved there."""
        from saferlhf.hub import resolve_model

        base_path = os.path.abspath(resolve_model(source))
        score_cfg_path = os.path.join(base_path, SCORE_CONFIG_NAME)
        kw = {"dtype": dtype, "device": device, "trust_remote_code": trust_remote_code,
              "attn_implementation": attn_implementation}
        if os.path.isfile(score_cfg_path) or _is_pku_dir(base_path) or is_sequence_classification_dir(base_path):
            donor = cls.from_pretrained(base_path, merge_lora=True, **kw)
            if template is None:
                template = donor.template
            if os.path.isfile(score_cfg_path) and _read_json(score_cfg_path).get("lora"):
                base_path = None
            return donor.backbone, template, base_path
        backbone = load_backbone(base_path, **kw)
        return backbone, template if template is not None else _template_from_meta(base_path), base_path

    @classmethod
    def from_backbone(
        cls,
        path_or_model: str | os.PathLike | nn.Module,
        *,
        score_type: str = "reward",
        score_dim: int = 1,
        score_bias: bool = True,
        normalizer: str | None = None,
        momentum: float = 0.9,
        do_normalize: bool = False,
        template: Template | dict | None = None,
        dtype: torch.dtype | str | None = "auto",
        device: torch.device | str | None = None,
        lora=None,
        gradient_checkpointing: bool = False,
        copy: bool = True,
        seed: int | None = None,
        trust_remote_code: bool = False,
        attn_implementation: str | None = None,
        **config_overrides: Any,
    ) -> ScoreModel:
        """A fresh score model on a backbone (the head is newly initialised).

        ``path_or_model``: an SFT causal-LM checkpoint dir (its base model is used, the LM head
        dropped, as the paper initialises RM and CM from the SFT model), any backbone dir, a
        ScoreModel dir (its backbone, LoRA merged: e.g. a critic from the reward model), or a
        model instance (its ``base_model``; deep-copied unless ``copy=False``).
        ``seed`` seeds the head initialisation.
        """
        base_path = None
        if isinstance(path_or_model, ScoreModel):
            source = path_or_model.backbone
            if template is None:
                template = path_or_model.template
        else:
            source = path_or_model
        if isinstance(source, (str, os.PathLike)):
            backbone, template, base_path = cls._backbone_at(
                source, template, dtype=dtype, device=device, trust_remote_code=trust_remote_code,
                attn_implementation=attn_implementation)
        else:  # an instance keeps its dtype unless one is named explicitly
            inst_dtype = None if (dtype is None or str(dtype).lower() == "auto") else dtype
            backbone = load_backbone(source, dtype=inst_dtype, device=device, copy=copy)
        if seed is not None:
            torch.manual_seed(seed)
        model = cls(
            backbone,
            ScoreConfig(
                score_type=score_type,
                score_dim=score_dim,
                score_bias=score_bias,
                normalizer=normalizer,
                momentum=momentum,
                do_normalize=do_normalize,
                base_model_path=base_path,
                **config_overrides,
            ),
            template=template,
        )
        if device is not None:
            model.to(device)
        if lora is not None:
            model.apply_lora(lora)
        if gradient_checkpointing:
            model.gradient_checkpointing_enable()
        return model

    # --- save / load ------------------------------------------------------------------
    def head_state_dict(self) -> dict[str, torch.Tensor]:
        """``score_head.*`` and ``normalizer.*`` tensors (what ``score_head.safetensors`` holds)."""
        out = {f"score_head.{k}": v for k, v in self.score_head.state_dict().items()}
        out.update({f"normalizer.{k}": v for k, v in self.normalizer.state_dict().items()})
        return {k: v.detach().to("cpu").contiguous() for k, v in out.items()}

    def load_head_state_dict(self, sd: dict[str, torch.Tensor], *, strict: bool = True) -> None:
        head = {k[len("score_head.") :]: v for k, v in sd.items() if k.startswith("score_head.")}
        w = self.score_head.weight
        self.score_head.load_state_dict(
            {k: v.to(device=w.device, dtype=w.dtype) for k, v in head.items()}, strict=strict
        )
        stats = {k[len("normalizer.") :]: v for k, v in sd.items() if k.startswith("normalizer.")}
        if stats:
            self.normalizer.set_stats(stats.get("mean"), stats.get("var"), None)
            if "count" in stats:
                self.normalizer.count.fill_(int(stats["count"].reshape(-1)[0].item()))

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *,
        tokenizer=None,
        merge_lora: bool = False,
        save_base: bool = True,
        state_dict: dict[str, torch.Tensor] | None = None,
        max_shard_size: int | str = "5GB",
        is_main_process: bool = True,
    ) -> None:
        """Write the checkpoint (layout in the module docstring).

        ``state_dict``: the full model state dict (``backbone.*``, ``score_head.*``,
        ``normalizer.*``) gathered by the caller, e.g. ``accelerator.get_state_dict(model)``
        under ZeRO-3 / FSDP; a LoRA backbone's is written as base weights plus the adapter.
        Only ``is_main_process`` writes.
        """
        from safetensors.torch import save_file

        if not is_main_process:
            return
        out = os.path.abspath(str(save_directory))
        os.makedirs(out, exist_ok=True)
        cfg = ScoreConfig.from_dict(self.score_config.to_dict())
        cfg.stats = self.normalizer.stats_dict()
        inner = self._inner_backbone()
        head_sd = self.head_state_dict()

        if state_dict is not None:
            head_sd = {
                k: v.detach().cpu().contiguous()
                for k, v in state_dict.items()
                if not k.startswith("backbone.")
            }
            cfg.lora = self._save_backbone_state(out, state_dict, merge_lora=merge_lora,
                                                 max_shard_size=max_shard_size)
        elif self.is_lora and merge_lora:
            inner.save_pretrained(
                out,
                state_dict=peft_clean_state_dict(self.backbone, merged=True),
                max_shard_size=max_shard_size,
            )
            cfg.lora = None
        elif self.is_lora:
            if save_base:
                inner.save_pretrained(
                    out,
                    state_dict=peft_clean_state_dict(self.backbone, merged=False),
                    max_shard_size=max_shard_size,
                )
                base = "."
            else:
                if not cfg.base_model_path or not os.path.isdir(cfg.base_model_path):
                    raise ValueError(
                        "save_base=False needs score_config.base_model_path (the backbone's source dir); "
                        f"got {cfg.base_model_path!r}"
                    )
                base = cfg.base_model_path
            self.backbone.save_pretrained(os.path.join(out, ADAPTER_DIR))
            cfg.lora = {"adapter_dir": ADAPTER_DIR, "base": base}
        else:
            inner.save_pretrained(out, max_shard_size=max_shard_size)
            cfg.lora = None

        save_file(head_sd, os.path.join(out, SCORE_HEAD_NAME), metadata={"format": "pt"})
        mark_not_sequence_classification(out)
        with open(os.path.join(out, SCORE_CONFIG_NAME), "w") as f:
            json.dump(cfg.to_dict(), f, indent=2)
        if tokenizer is not None:
            tokenizer.save_pretrained(out)

    def _save_backbone_state(self, out: str, state_dict: dict[str, torch.Tensor], *, merge_lora: bool,
                             max_shard_size: int | str) -> dict[str, str] | None:
        """Write the backbone from a gathered full ``state_dict``; a LoRA backbone as base
        weights plus its adapter (both from the given values). Returns ``score_config.lora``."""
        bb_sd = {k[len("backbone."):]: v for k, v in state_dict.items() if k.startswith("backbone.")}
        inner = self._inner_backbone()
        if not self.is_lora:
            inner.save_pretrained(out, state_dict=bb_sd, max_shard_size=max_shard_size)
            return None
        if merge_lora:
            raise ValueError("save_pretrained(state_dict=..., merge_lora=True) is not supported: "
                             "save the adapter (merge_lora=False) and merge when loading")
        inner.save_pretrained(out, state_dict=peft_base_weights(self.backbone, bb_sd), max_shard_size=max_shard_size)
        self.backbone.save_pretrained(os.path.join(out, ADAPTER_DIR), state_dict=bb_sd)
        return {"adapter_dir": ADAPTER_DIR, "base": "."}

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        normalize: bool | None = None,
        score_type: str | None = None,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        is_trainable: bool = True,
        merge_lora: bool = False,
        template: Template | dict | None = None,
        trust_remote_code: bool = False,
        attn_implementation: str | None = None,
    ) -> ScoreModel:
        """Load our checkpoint, or PKU's released layout (detected from config.json).

        ``normalize``: ``True``/``False`` switches normalisation on/off, ``None`` keeps the
        saved setting. ``score_type`` re-types the model (e.g. ``"critic"`` to start a critic
        from a reward model: no normalisation, statistics frozen). ``dtype=None`` keeps the
        stored dtype; ``"auto"`` = bf16 where the hardware has it. A LoRA checkpoint comes
        back peft-wrapped (adapters trainable when ``is_trainable``) unless ``merge_lora``.
        """
        from saferlhf.hub import resolve_model

        path = os.path.abspath(resolve_model(path))
        kw = {"dtype": dtype, "device": device, "trust_remote_code": trust_remote_code,
              "attn_implementation": attn_implementation}
        if not os.path.isfile(os.path.join(path, SCORE_CONFIG_NAME)):
            model = cls._from_foreign_layout(path, normalize=normalize, template=template, **kw)
            return model.retype(score_type) if score_type else model
        with open(os.path.join(path, SCORE_CONFIG_NAME)) as f:
            cfg = ScoreConfig.from_dict(json.load(f))
        dtype_kw = {"dtype": "checkpoint" if dtype is None else dtype}
        lora = cfg.lora
        if lora:
            base_dir = path if lora.get("base", ".") == "." else lora["base"]
            backbone = load_backbone(base_dir, **{**kw, **dtype_kw})
            from peft import PeftModel

            with quiet_transformers():
                backbone = PeftModel.from_pretrained(
                    backbone,
                    os.path.join(path, lora.get("adapter_dir", ADAPTER_DIR)),
                    is_trainable=is_trainable,
                )
            if merge_lora:
                backbone = backbone.merge_and_unload()
        else:
            backbone = load_backbone(path, **{**kw, **dtype_kw})
        model = cls(backbone, cfg, template=template)
        model.score_config.lora = None
        inner = model._inner_backbone()
        inner.config.architectures = [type(inner).__name__]  # drop the save-time marker
        from safetensors.torch import load_file

        model.load_head_state_dict(load_file(os.path.join(path, SCORE_HEAD_NAME)))
        if device is not None:
            model.to(device)
        if normalize is not None:
            model.set_normalize(normalize)
        if score_type:
            model.retype(score_type)
        return model

    @classmethod
    def _from_foreign_layout(cls, path: str, *, normalize: bool | None, template, dtype, device,
                             trust_remote_code: bool, attn_implementation: str | None) -> ScoreModel:
        """An HF ``*ForSequenceClassification`` folder (weights shared) or PKU's Beaver layout;
        anything else is a FileNotFoundError that names the layouts read."""
        if is_sequence_classification_dir(path):
            from .seqcls import load_sequence_classification

            meta_path = os.path.join(path, _META_FILE)
            meta = _read_json(meta_path) if os.path.isfile(meta_path) else {}
            if meta.get("kind") == "guard_unsafe_export" and not meta.get("score_type"):
                from saferlhf.config import ConfigError

                raise ConfigError(f"{path}: an exported guard that scores {meta.get('moderation')} text "
                                  f"({meta.get('encoding')} encoding), not prompt + response + EOS; it "
                                  "cannot serve as a reward / cost model (use the guard folder with --guard)")
            seq = load_sequence_classification(path, dtype=dtype, device=device, trust_remote_code=trust_remote_code,
                                               attn_implementation=attn_implementation)
            if normalize:
                logger.warning("%s: a *ForSequenceClassification model has no normaliser; "
                               "normalize=True has no effect", path)
            return cls.from_sequence_classification(
                seq, score_type=meta.get("score_type") or "reward",
                template=template if template is not None else meta.get("template"))
        if _is_pku_dir(path):
            return load_pku_score_model(path, normalize=normalize, dtype=dtype, device=device, template=template,
                                        trust_remote_code=trust_remote_code,
                                        attn_implementation=attn_implementation)
        raise FileNotFoundError(
            f"{path} is not a score model checkpoint: no {SCORE_CONFIG_NAME} (saferlhf), no PKU "
            "score config (architectures *ForScore) and no *ForSequenceClassification config with "
            "num_labels=1; train one with `saferlhf reward-model` / `cost-model`, or start one from "
            "a language model with ScoreModel.from_backbone"
        )

    def copy_as_critic(self) -> ScoreModel:
        """A trainable copy re-typed as a critic (what RL starts a value model from)."""
        import copy

        critic = copy.deepcopy(self).retype("critic")
        critic.requires_grad_(True)
        return critic

    @classmethod
    def from_sequence_classification(
        cls,
        model: nn.Module,
        *,
        score_type: str = "reward",
        template: Template | dict | None = None,
    ) -> ScoreModel:
        """Wrap an in-memory HF ``*ForSequenceClassification`` (``num_labels`` = score dim,
        usually 1) **sharing its weights**: the backbone is its base model, the head its
        ``score`` (or ``classifier``) linear layer; no normaliser. Scores are read at the last
        attention-mask position (HF pools at the last token that is not ``pad_token_id``: the
        same position unless the pad token is also the sequence's last real token, e.g. EOS)."""
        from .seqcls import sequence_classification_head

        head = sequence_classification_head(model)
        backbone = getattr(model, model.base_model_prefix)
        wrapped = cls(
            backbone,
            ScoreConfig(score_type=score_type, score_dim=head.out_features,
                        score_bias=head.bias is not None, normalizer="none"),
            template=template,
        )
        wrapped.score_head = head
        wrapped.score_config.base_model_path = getattr(model, "name_or_path", None) or None
        return wrapped

    def retype(self, score_type: str) -> ScoreModel:
        """Change the score type in place (normalise function follows; a critic gets no
        normalisation and frozen statistics)."""
        if score_type == self.score_config.score_type:
            return self
        cfg = self.score_config
        cfg.score_type = score_type
        self.normalizer.function = normalize_function_for(score_type)
        if score_type == "critic":
            cfg.do_normalize = False
            cfg.normalizer = self.normalizer.kind = "none"
        return self


# ----------------------------------------------------------------------------- PKU interop
def _read_json(path: str) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)


# Metadata file that policy (SFT) checkpoints carry (see saferlhf.models.checkpoint).
_META_FILE = "saferlhf.json"


def _template_from_meta(path: str) -> dict[str, Any] | None:
    meta = os.path.join(path, _META_FILE)
    if os.path.isfile(meta):
        return _read_json(meta).get("template")
    return None


def is_sequence_classification_dir(path: str) -> bool:
    """A HF ``*ForSequenceClassification`` folder (config ``architectures``), not ours or PKU's."""
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path) or os.path.isfile(os.path.join(path, SCORE_CONFIG_NAME)):
        return False
    archs = _read_json(cfg_path).get("architectures") or []
    return any(str(a).endswith("ForSequenceClassification") for a in archs)


# Written into a score folder's backbone weights under the names HF sequence-classification
# heads use, with a shape no head has: ``AutoModelForSequenceClassification.from_pretrained``
# on the folder then stops with a size-mismatch error instead of silently initialising a
# random head (``AutoModel`` ignores the key as unexpected). ``saferlhf export`` writes the
# exact sequence-classification model.
_SEQCLS_GUARD_KEYS = ("score.weight", "classifier.weight")
_SEQCLS_GUARD_FILE = "saferlhf-not-seqcls.safetensors"
NOT_SEQCLS_ARCHITECTURE = "SaferlhfScoreModel"


def mark_not_sequence_classification(path: str, architecture: str = NOT_SEQCLS_ARCHITECTURE) -> None:
    """Make a saved score (or guard) folder fail loudly as a sequence-classification checkpoint:
    guard tensors in its weights and ``architectures: [architecture]`` in its config.json."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    guard = {k: torch.zeros(1, 1) for k in _SEQCLS_GUARD_KEYS}
    index = os.path.join(path, "model.safetensors.index.json")
    single = os.path.join(path, "model.safetensors")
    if os.path.isfile(index):
        data = _read_json(index)
        save_file(guard, os.path.join(path, _SEQCLS_GUARD_FILE), metadata={"format": "pt"})
        data["weight_map"].update({k: _SEQCLS_GUARD_FILE for k in guard})
        with open(index, "w") as f:
            json.dump(data, f, indent=2)
    elif os.path.isfile(single):
        with safe_open(single, framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
            meta = f.metadata() or {"format": "pt"}
        tensors.update(guard)
        tmp = single + ".tmp"
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, single)
    cfg_path = os.path.join(path, "config.json")
    if os.path.isfile(cfg_path):
        cfg = _read_json(cfg_path)
        cfg["architectures"] = [architecture]
        with open(cfg_path, "w") as f:
            json.dump(cfg, f, indent=2, sort_keys=True)


def _is_pku_dir(path: str) -> bool:
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path) or os.path.isfile(os.path.join(path, SCORE_CONFIG_NAME)):
        return False
    cfg = _read_json(cfg_path)
    archs = cfg.get("architectures") or []
    return "score_type" in cfg or any(str(a).endswith("ForScore") for a in archs)


def _weight_files(path: str) -> tuple[dict[str, str] | None, list[str]]:
    """``(weight_map, files)``: the key -> file map of a sharded checkpoint (None when
    unsharded) and the weight files (safetensors preferred over .bin)."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = os.path.join(path, index_name)
        if os.path.isfile(index):
            wmap = _read_json(index)["weight_map"]
            return wmap, sorted(set(wmap.values()))
    for name in ("model.safetensors", "pytorch_model.bin"):
        if os.path.isfile(os.path.join(path, name)):
            return None, [name]
    raise FileNotFoundError(f"no model weights (safetensors or .bin, sharded or not) in {path}")


def read_checkpoint_tensors(path: str, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Tensors whose key starts with one of ``prefixes`` from a (sharded) HF checkpoint dir,
    opening only the shards that hold them."""
    wmap, files = _weight_files(path)
    if wmap is not None:
        files = sorted({f for k, f in wmap.items() if k.startswith(prefixes)})
    out: dict[str, torch.Tensor] = {}
    for name in files:
        full = os.path.join(path, name)
        if name.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(full, framework="pt") as f:
                for k in f.keys():  # noqa: SIM118 - safe_open is not iterable
                    if k.startswith(prefixes):
                        out[k] = f.get_tensor(k)
        else:
            sd = torch.load(full, map_location="cpu", weights_only=True, mmap=True)
            out.update({k: v.clone() for k, v in sd.items() if k.startswith(prefixes)})
    return out


def load_pku_score_model(
    path: str | os.PathLike,
    *,
    normalize: bool | None = None,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    template: Template | dict | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
) -> ScoreModel:
    """Load a PKU safe-rlhf score model (``beaver-7b-v1.0-reward`` / ``-cost`` layout).

    The backbone comes from ``AutoModel.from_pretrained(dir)`` (strips the ``model.`` prefix;
    every backbone weight must be found), the head from ``score_head.*``; normaliser
    statistics from ``normalizer.*`` tensors when the weights hold them, else from the config's
    ``mean`` / ``var``. ``normalizer_type`` maps RunningMeanStd / ExponentialMovingAverage /
    null onto running / ema / none (none = frozen statistics, still applied when
    ``do_normalize``). The template defaults to the classic Beaver plain template.
    """
    path = os.path.abspath(str(path))
    raw = _read_json(os.path.join(path, "config.json"))
    head_sd = read_checkpoint_tensors(path, ("score_head.", "normalizer."))
    if "score_head.weight" not in head_sd:
        raise ValueError(f"{path}: no score_head.weight in the checkpoint; not a PKU score model")
    bias = raw.get("score_bias", raw.get("bias"))
    if bias is None or bool(bias) != ("score_head.bias" in head_sd):
        bias = "score_head.bias" in head_sd  # the weights decide
    score_dim = int(raw.get("score_dim") or head_sd["score_head.weight"].shape[0])
    momentum = raw.get("momentum")
    cfg = ScoreConfig(
        score_type=raw.get("score_type") or "reward",
        score_dim=score_dim,
        score_bias=bool(bias),
        normalizer=normalizer_kind_from_pku(raw.get("normalizer_type")),
        momentum=0.9 if momentum is None else float(momentum),
        do_normalize=bool(raw.get("do_normalize", False)),
        base_model_path=path,
    )
    backbone = load_backbone(
        path,
        dtype="checkpoint" if dtype is None else dtype,
        device=device,
        trust_remote_code=trust_remote_code,
        attn_implementation=attn_implementation,
    )
    bb_cfg = backbone.config
    for key in _PKU_CONFIG_KEYS:
        if hasattr(bb_cfg, key):
            try:
                delattr(bb_cfg, key)
            except AttributeError:
                pass
    bb_cfg.architectures = [type(backbone).__name__]

    model = ScoreModel(backbone, cfg, template=template if template is not None else Template())
    model.load_head_state_dict({k: v for k, v in head_sd.items() if k.startswith("score_head.")})
    stats = {k[len("normalizer.") :]: v for k, v in head_sd.items() if k.startswith("normalizer.")}
    mean = stats.get("mean", raw.get("mean"))
    var = stats.get("var", raw.get("var"))
    count = int(stats["count"].reshape(-1)[0].item()) if "count" in stats else None
    model.normalizer.set_stats(mean, var, count)
    if device is not None:
        model.to(device)
    if normalize is not None:
        model.set_normalize(normalize)
    return model
