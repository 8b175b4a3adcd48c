"""The guard model: one backbone, three heads, and the moderation API (DESIGN §8).

    pooled   = pool(backbone(**inputs).last_hidden_state)             (B, H)
    logits   = Linear(H, 1 + 4 + K)(pooled) = [unsafe | severity 0..3 | K categories]
               (``unsafe_bias: false``: the unsafe row has no bias, so ``saferlhf export``
               folds it exactly into a bias-free HF ``score`` layer on any backbone)
    score    = σ(unsafe_logit / T)                                     P(unsafe), calibrated

The backbone is any Hugging Face base model loaded with ``load_backbone`` (a tiny Llama from
scratch, an SFT policy's base model, a BERT encoder such as MiniLM, later a VLM's base model);
extra forward keyword arguments (``pixel_values`` …) go to it untouched, as in ScoreModel.
Pooling: ``last`` (the last real token: decoders, left or right padding), ``first`` ([CLS]) or
``mean`` (masked mean: sentence encoders). T is fitted on held-out data after training
(``fit_temperature``); the decision threshold on P(unsafe) is saved with the model.

Image + text: with a vision-language backbone (a VLM's base model: ``LlavaModel``,
``Qwen2VLModel`` …) the encoder is a :class:`saferlhf.models.tiny_vlm.VLMProcessor`: the
images go into the first user turn as image tokens (expanded to the image's features), the
response follows, and the last real token is pooled; ``pixel_values`` (+ ``image_grid_thw``,
``mm_token_type_ids`` for Qwen2-VL) go to the backbone. Such a checkpoint also holds
``vlm_processor.json``; ``GuardConfig.vlm_style`` names the style (``None``: text-only).

Verdicts (``Guard.moderate``): ``score`` = P(unsafe); ``safe`` = score < threshold;
``severity`` = 0 when safe, else the most likely level among 1..3 (class-weight prior removed) (``None`` for a flagged text
when the guard was trained without severity labels); ``categories`` = the taxonomy's names with
σ(category logit) >= 0.5, at least the most likely one for a flagged text (empty when safe).

Checkpoint layout (``GuardModel.save_pretrained``)::

    config.json, model.safetensors   the backbone (AutoModel-loadable; architectures
                                     [SaferlhfGuardModel] and (1, 1) score/classifier guard tensors
                                     make AutoModelForSequenceClassification fail loudly)
    guard_config.json                GuardConfig (taxonomy, pooling, encoding, template, T, threshold …)
    guard_heads.safetensors          head.weight, head.bias
    tokenizer files                  (+ vlm_processor.json for an image + text guard)
"""

from __future__ import annotations

import inspect
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from saferlhf.data.templates import Template, encode_prompt, encode_response, template_for
from saferlhf.models.loading import load_backbone
from saferlhf.models.score_model import (
    _hidden_size,
    builds_own_positions,
    end_indices,
    mark_not_sequence_classification,
    position_ids_from_mask,
)

GUARD_CONFIG_NAME = "guard_config.json"
GUARD_HEADS_NAME = "guard_heads.safetensors"
FORMAT_VERSION = 1
N_SEVERITY = 4


# ----------------------------------------------------------------------------- config
@dataclass
class GuardConfig:
    """What a guard checkpoint needs besides the backbone (``guard_config.json``)."""

    categories: list[str] = field(default_factory=list)
    taxonomy: str = "none"  # pku | beavertails | beavertails_v | custom | none
    moderation: str = "output"  # input (prompt only) | output (prompt + response)
    pooling: str = "last"  # last | first | mean
    encoding: str = "template"  # template | pair
    template: dict[str, Any] | None = None
    max_length: int = 128
    temperature: float = 1.0
    threshold: float = 0.5
    # prior corrections added to the logits at prediction time: -log(class weight) undoes the
    # class weighting of the loss (a weight w on a class shifts its optimal logit by log w)
    severity_bias: list[float] = field(default_factory=list)
    category_bias: list[float] = field(default_factory=list)
    heads: dict[str, bool] = field(default_factory=lambda: {"unsafe": True, "severity": True, "categories": True})
    unsafe_bias: bool = True  # false: the unsafe logit is w·h (no constant), exportable exactly
    backbone_model_type: str | None = None
    backbone_class: str | None = None
    vlm_style: str | None = None  # llava | qwen2_vl: an image + text guard (None: text-only)
    stats: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.pooling not in ("last", "first", "mean"):
            raise ValueError(f"pooling must be last|first|mean, got {self.pooling!r}")
        if self.encoding not in ("template", "pair"):
            raise ValueError(f"encoding must be template|pair, got {self.encoding!r}")
        if self.moderation not in ("input", "output"):
            raise ValueError(f"moderation must be input|output, got {self.moderation!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GuardConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class GuardOutput:
    unsafe_logits: torch.Tensor  # (B,)
    severity_logits: torch.Tensor  # (B, 4)
    category_logits: torch.Tensor  # (B, K)
    pooled: torch.Tensor  # (B, H)


# ----------------------------------------------------------------------------- model
class GuardModel(nn.Module):
    """Backbone + pooling + ``Linear(H, 1 + 4 + K)`` heads (layout in the module docstring)."""

    def __init__(self, backbone: nn.Module, config: GuardConfig) -> None:
        super().__init__()
        self.backbone = backbone
        self.guard_config = config
        config.backbone_model_type = getattr(backbone.config, "model_type", None)
        config.backbone_class = type(backbone).__name__
        hidden = _hidden_size(backbone.config)
        param = next(backbone.parameters(), None)
        self.head = nn.Linear(hidden, 1 + N_SEVERITY + len(config.categories),
                              device=param.device if param is not None else None)
        with torch.no_grad():
            nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(hidden + 1))
            self.head.bias.zero_()
        # 0 on the unsafe row when unsafe_bias is off: that bias entry is then never used and
        # gets no gradient (it stays at its initial 0)
        bias_mask = torch.ones_like(self.head.bias)
        bias_mask[0] = float(config.unsafe_bias)
        self.register_buffer("_bias_mask", bias_mask, persistent=False)
        params = inspect.signature(backbone.forward).parameters
        self._accepts = set(params)
        self._pass_position_ids = "position_ids" in params and not builds_own_positions(backbone.config)

    @property
    def is_multimodal(self) -> bool:
        """True when the backbone has a vision tower (it takes ``pixel_values``)."""
        return hasattr(self.backbone.config, "vision_config")

    @property
    def config(self):
        """The backbone's Hugging Face config (ours is :attr:`guard_config`)."""
        return self.backbone.config

    @property
    def categories(self) -> list[str]:
        return self.guard_config.categories

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def unsafe_head(self) -> tuple[torch.Tensor, float]:
        """``(w, b)`` of the raw unsafe logit ``z = w·h + b`` (``b`` = 0 with ``unsafe_bias`` off)."""
        return self.head.weight[0].detach(), float((self.head.bias * self._bias_mask)[0].detach())

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                **kwargs: Any) -> GuardOutput:
        """Logits of every head; extra kwargs (``token_type_ids``, ``pixel_values`` …) go to the backbone."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if self._pass_position_ids and "position_ids" not in kwargs:
            kwargs["position_ids"] = position_ids_from_mask(attention_mask)
        if "use_cache" in self._accepts:
            kwargs.setdefault("use_cache", False)
        vision = {"pixel_values", "image_grid_thw", "mm_token_type_ids", "image_sizes"}
        kwargs = {k: v for k, v in kwargs.items() if k in self._accepts or k in vision}
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        pooled = pool(hidden, attention_mask, self.guard_config.pooling)
        logits = nn.functional.linear(pooled.to(self.head.weight.dtype), self.head.weight,
                                      self.head.bias * self._bias_mask).float()
        return GuardOutput(
            unsafe_logits=logits[:, 0],
            severity_logits=logits[:, 1:1 + N_SEVERITY],
            category_logits=logits[:, 1 + N_SEVERITY:],
            pooled=pooled,
        )

    # --- save / load ------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike, *, tokenizer=None) -> None:
        from safetensors.torch import save_file

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(out)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()},
                  str(out / GUARD_HEADS_NAME), metadata={"format": "pt"})
        mark_not_sequence_classification(str(out), "SaferlhfGuardModel")  # never a silent random head
        (out / GUARD_CONFIG_NAME).write_text(json.dumps(self.guard_config.to_dict(), indent=2))
        if tokenizer is not None:
            tokenizer.save_pretrained(out)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, device=None, dtype="fp32") -> GuardModel:
        from safetensors.torch import load_file

        path = Path(directory)
        cfg_path = path / GUARD_CONFIG_NAME
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{path} is not a guard checkpoint (no {GUARD_CONFIG_NAME}); "
                                    "train one with `saferlhf guard train`")
        cfg = GuardConfig.from_dict(json.loads(cfg_path.read_text()))
        backbone = load_backbone(str(path), dtype=dtype, device=device)
        backbone.config.architectures = [type(backbone).__name__]  # drop the save-time marker
        model = cls(backbone, cfg)
        sd = load_file(str(path / GUARD_HEADS_NAME))
        model.head.load_state_dict({k: v.to(model.head.weight) for k, v in sd.items()})
        if device is not None:
            model.to(device)
        return model


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str) -> torch.Tensor:
    """(B, L, H) -> (B, H): the last real token, the first token, or the masked mean."""
    if how == "last":
        idx = end_indices(attention_mask).to(hidden.device)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]
    if how == "first":
        return hidden[:, 0]
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


# ----------------------------------------------------------------------------- encoding
class GuardInputError(ValueError):
    """An input the guard cannot encode (e.g. a prompt with its image tokens longer than
    ``max_length``); the message names the record."""


def prompt_text(prompt: Any) -> str:
    """A prompt as plain text (chat messages: the contents joined, one line per turn)."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        return "\n".join(str(m.get("content", "")) for m in prompt if isinstance(m, dict))
    raise TypeError(f"a prompt is a string or a list of chat messages, got {type(prompt).__name__}")


class GuardEncoder:
    """Turns (prompt [, response] [, images]) into model inputs exactly as the guard was trained.

    ``template``: ``template.render(prompt)`` ids, then `` response`` + EOS ids (prompt-only:
    the rendered prompt alone). When too long, the response keeps at least half of
    ``max_length`` (its beginning) and the prompt keeps its end (the request and the
    assistant marker). ``pair``: the tokenizer's own pair encoding with ``longest_first``
    truncation (BERT-style ``[CLS] prompt [SEP] response [SEP]``, token type ids included).

    Image + text (``tokenizer`` is a :class:`~saferlhf.models.tiny_vlm.VLMProcessor`): the
    processor renders the prompt with one image placeholder per image in the first user turn,
    expands each to the image's tokens, and appends `` response`` + EOS; a response that does
    not fit is cut at its end (image tokens are never cut). Images are references (a path,
    bytes, a PIL image); a path is decoded once per ``cache`` (a dict the caller keeps), and
    an image that cannot be opened raises :class:`~saferlhf.data.multimodal.ImageLoadError`
    naming ``source``.
    """

    def __init__(self, tokenizer, config: GuardConfig) -> None:
        from saferlhf.processing import VLMProcessor

        self.processor = tokenizer if isinstance(tokenizer, VLMProcessor) else None
        self.tokenizer = tokenizer.tokenizer if self.processor is not None else tokenizer
        self.config = config
        if self.processor is not None:
            self.template = self.processor.template
        else:
            self.template = Template.from_dict(config.template) if config.template else template_for(tokenizer)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    @property
    def multimodal(self) -> bool:
        return self.processor is not None

    def encode(self, prompt: Any, response: str | None = None, images: Sequence[Any] | None = None, *,
               source: str = "", cache: dict | None = None) -> dict[str, Any]:
        cfg, tok = self.config, self.tokenizer
        if cfg.moderation == "input":
            response = None
        images = _image_list(images)
        if self.processor is not None:
            return self._encode_vlm(prompt, response, images, source=source, cache=cache)
        if images:
            raise NotImplementedError(
                "this guard has a text-only backbone; image + text moderation needs a guard trained on a "
                "vision-language backbone (saferlhf guard train --model tiny on image data)")
        if cfg.encoding == "pair":
            args = (prompt_text(prompt),) if response is None else (prompt_text(prompt), response)
            enc = tok(*args, truncation=True, max_length=cfg.max_length)
            out = {"input_ids": list(enc["input_ids"])}
            if "token_type_ids" in enc:
                out["token_type_ids"] = list(enc["token_type_ids"])
            return out
        p = encode_prompt(tok, self.template, prompt)
        r = [] if response is None else encode_response(tok, self.template, response)
        budget = cfg.max_length
        if len(p) + len(r) > budget:
            r = r[: max(budget - len(p), budget // 2)] if r else r
            p = p[-(budget - len(r)):]
        return {"input_ids": p + r}

    def _encode_vlm(self, prompt, response, images, *, source, cache) -> dict[str, Any]:
        from saferlhf.data.multimodal import load_image

        cache = {} if cache is None else cache
        inputs = []
        for ref in images:
            key = ("image", str(ref)) if isinstance(ref, (str, Path)) else None
            if key is not None and key in cache:
                inputs.append(cache[key])
                continue
            one = self.processor.image_inputs([[load_image(ref, source=source)]])
            if key is not None:
                cache[key] = one
            inputs.append(one)
        counts = [c for one in inputs for c in self.processor.tokens_per_image(one)]
        try:
            enc = self.processor.encode(prompt, [None] * len(images), response, counts=counts,
                                        max_length=self.config.max_length, source=source or "guard input")
        except ValueError as e:  # a prompt longer than max_length, image tokens that do not match
            raise GuardInputError(str(e)) from None
        return {"input_ids": enc.input_ids, "images": inputs}

    def collate(self, encoded: Sequence[dict[str, Any]], device=None) -> dict[str, torch.Tensor]:
        """Right-padded batch tensors (``input_ids``, ``attention_mask`` [, ``token_type_ids``]
        [, the vision inputs of an image + text guard])."""
        width = max(len(e["input_ids"]) for e in encoded)
        B = len(encoded)
        ids = torch.full((B, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((B, width), dtype=torch.long)
        has_tt = all("token_type_ids" in e for e in encoded)
        tt = torch.zeros((B, width), dtype=torch.long) if has_tt else None
        for i, e in enumerate(encoded):
            n = len(e["input_ids"])
            ids[i, :n] = torch.as_tensor(e["input_ids"], dtype=torch.long)
            mask[i, :n] = 1
            if tt is not None:
                tt[i, :n] = torch.as_tensor(e["token_type_ids"], dtype=torch.long)
        batch = {"input_ids": ids, "attention_mask": mask}
        if tt is not None:
            batch["token_type_ids"] = tt
        if self.processor is not None:
            image_inputs = concat_image_inputs(self.processor.style, [e.get("images") or [] for e in encoded])
            batch.update(self.processor.model_kwargs(ids, image_inputs))
        if device is not None:
            batch = {k: v.to(device) for k, v in batch.items()}
        return batch


def _image_list(images: Any) -> list[Any]:
    """``None`` / one reference / a list of references -> a list."""
    if images is None:
        return []
    if isinstance(images, (list, tuple)):
        return [im for im in images if im is not None]
    return [images]


def concat_image_inputs(style: str, rows: Sequence[Sequence[Any]]):
    """One :class:`~saferlhf.models.tiny_vlm.ImageInputs` for a batch from the single-image
    inputs of every row (row order kept)."""
    from saferlhf.models.tiny_vlm import ImageInputs

    per_row = tuple(len(r) for r in rows)
    flat = [one for r in rows for one in r]
    if not flat:
        return ImageInputs(style, None, per_row)
    pixel_values = torch.cat([one.pixel_values for one in flat])
    if flat[0].image_grid_thw is None:
        return ImageInputs(style, pixel_values, per_row)
    return ImageInputs(style, pixel_values, per_row,
                       image_grid_thw=torch.cat([one.image_grid_thw for one in flat]),
                       patches_per_image=tuple(p for one in flat for p in one.patches_per_image))


# ----------------------------------------------------------------------------- calibration
def fit_temperature(logits: Sequence[float] | np.ndarray, labels: Sequence[bool] | np.ndarray, *,
                    t_min: float = 0.05, t_max: float = 20.0, iters: int = 200) -> float:
    """The temperature T minimising the NLL of σ(z / T) on held-out (logit, label) pairs.

    The NLL is convex in β = 1/T, so a golden-section search over β ∈ [1/t_max, 1/t_min] finds
    the optimum (clipped to the bounds, e.g. separable data pushes T to t_min). Returns 1.0
    when one class is missing.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if z.size == 0 or y.min() == y.max():
        return 1.0

    def nll(beta: float) -> float:
        s = beta * z
        return float(np.mean(np.logaddexp(0.0, s) - y * s))

    lo, hi = 1.0 / t_max, 1.0 / t_min
    g = (math.sqrt(5) - 1) / 2
    a, b = lo + (1 - g) * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(iters):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = lo + (1 - g) * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(b)
    return float(1.0 / ((lo + hi) / 2))


def threshold_for_fpr(negative_scores: Sequence[float] | np.ndarray, target_fpr: float,
                      floor: float = 0.05) -> float:
    """The lowest threshold t (>= ``floor``) with ``mean(negative_scores >= t) <= target_fpr``."""
    s = np.sort(np.asarray(negative_scores, dtype=np.float64))[::-1]
    if s.size == 0:
        return 0.5
    allowed = int(math.floor(target_fpr * s.size))  # negatives that may sit at or above t
    if allowed >= s.size:
        return floor
    t = float(np.nextafter(s[allowed], 1.0))  # just above the first negative that must be below t
    return max(t, floor)


# ----------------------------------------------------------------------------- the API
class Guard:
    """Moderation with a trained guard: ``moderate``, ``moderate_batch``, ``score``, ``cost``.

    ``score(prompts, responses[, images])`` (also ``guard(prompts, responses)``) is the batch
    scorer of P(unsafe), a cost source for RL and evaluation; ``cost`` gives the calibrated
    logit minus logit(threshold), which is > 0 exactly when a text is flagged (the cost-model
    sign convention). ``images``: one entry per prompt (a path, PIL image or bytes, a list of
    them, or None); only an image + text guard takes them (a text-only guard raises
    ``NotImplementedError``).
    """

    def __init__(self, model: GuardModel, tokenizer, *, batch_size: int = 64,
                 threshold: float | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = model.guard_config
        self.encoder = GuardEncoder(tokenizer, self.config)
        self.batch_size = batch_size
        if threshold is not None:
            self.config.threshold = float(threshold)

    @classmethod
    def load(cls, directory: str | os.PathLike, *, device=None, batch_size: int = 64,
             threshold: float | None = None) -> Guard:
        from saferlhf.processing import load_processor

        model = GuardModel.from_pretrained(directory, device=device)
        return cls(model, load_processor(directory), batch_size=batch_size, threshold=threshold)

    @property
    def threshold(self) -> float:
        return self.config.threshold

    @property
    def categories(self) -> list[str]:
        return self.config.categories

    @property
    def multimodal(self) -> bool:
        """True for an image + text guard (a vision-language backbone and its processor)."""
        return self.encoder.multimodal

    def _check_images(self, images) -> None:
        if images is not None and len(_image_list(images)) and not self.multimodal:
            raise NotImplementedError(
                "this guard has a text-only backbone; image + text moderation needs a guard trained on a "
                "vision-language backbone (saferlhf guard train --model tiny on image data)")

    @torch.no_grad()
    def logits(self, prompts: Sequence[Any], responses: Sequence[str | None] | None = None,
               images: Sequence[Any] | None = None, *, sources: Sequence[str] | None = None
               ) -> dict[str, np.ndarray]:
        """Raw head logits: ``unsafe`` (N,), ``severity`` (N, 4), ``categories`` (N, K).

        ``images``: per prompt, its image(s) or None. ``sources``: a name per row for errors
        (e.g. ``file.jsonl:3``); an image that cannot be opened raises ``ImageLoadError``."""
        n = len(prompts)
        responses = [None] * n if responses is None else list(responses)
        if len(responses) != n:
            raise ValueError(f"{n} prompts but {len(responses)} responses")
        images = [None] * n if images is None else list(images)
        if len(images) != n:
            raise ValueError(f"{n} prompts but {len(images)} image entries")
        for im in images:
            self._check_images(im)
        sources = [f"row {i}" for i in range(n)] if sources is None else list(sources)
        outs: dict[str, list[np.ndarray]] = {"unsafe": [], "severity": [], "categories": []}
        # Sort by length so padding stays small; restore the order at the end. Images are
        # decoded batch by batch (memory stays bounded), so their rows are sorted by text length.
        if self.multimodal:
            encoded = None
            order = sorted(range(n), key=lambda i: len(prompt_text(prompts[i])) + len(responses[i] or ""))
        else:
            encoded = [self.encoder.encode(p, r) for p, r in zip(prompts, responses, strict=True)]
            order = sorted(range(n), key=lambda i: len(encoded[i]["input_ids"]))
        device = self.model.device
        for s in range(0, n, self.batch_size):
            idx = order[s:s + self.batch_size]
            if encoded is None:
                cache: dict = {}
                rows = [self.encoder.encode(prompts[i], responses[i], images[i], source=sources[i], cache=cache)
                        for i in idx]
            else:
                rows = [encoded[i] for i in idx]
            batch = self.encoder.collate(rows, device)
            out = self.model(**batch)
            outs["unsafe"].append(out.unsafe_logits.cpu().numpy())
            outs["severity"].append(out.severity_logits.cpu().numpy())
            outs["categories"].append(out.category_logits.cpu().numpy())
        inv = np.argsort(np.asarray(order, dtype=np.int64)) if n else np.zeros(0, dtype=np.int64)
        k = len(self.categories)
        return {
            "unsafe": np.concatenate(outs["unsafe"])[inv] if n else np.zeros(0),
            "severity": np.concatenate(outs["severity"])[inv] if n else np.zeros((0, N_SEVERITY)),
            "categories": np.concatenate(outs["categories"])[inv] if n else np.zeros((0, k)),
        }

    def score(self, prompts: Sequence[Any], responses: Sequence[str | None] | None = None,
              images: Sequence[Any] | None = None) -> np.ndarray:
        """Calibrated P(unsafe) of each (prompt [, response] [, images])."""
        z = self.logits(prompts, responses, images)["unsafe"]
        return _sigmoid(z / self.config.temperature)

    __call__ = score

    def cost(self, prompts: Sequence[Any], responses: Sequence[str | None] | None = None,
             images: Sequence[Any] | None = None) -> np.ndarray:
        """``z / T − logit(threshold)``: > 0 iff flagged (a cost-model-style score)."""
        z = self.logits(prompts, responses, images)["unsafe"] / self.config.temperature
        t = self.config.threshold
        return z - math.log(t / (1 - t))

    def verdicts_from_logits(self, logits: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        score = _sigmoid(logits["unsafe"] / self.config.temperature)
        flagged = score >= self.config.threshold
        has_sev = self.config.heads.get("severity", True)
        sev_logits = logits["severity"] + np.asarray(self.config.severity_bias or [0.0] * N_SEVERITY)
        sev_level = 1 + sev_logits[:, 1:].argmax(-1) if len(score) else np.zeros(0, dtype=int)
        cat_bias = np.asarray(self.config.category_bias or [0.0] * len(self.categories))
        cat_logits = logits["categories"] + cat_bias
        cats = _sigmoid(cat_logits) >= 0.5 if self.categories else None
        use_cats = self.config.heads.get("categories", True) and self.categories
        out = []
        for i in range(len(score)):
            unsafe = bool(flagged[i])
            severity = 0 if not unsafe else (int(sev_level[i]) if has_sev else None)
            names = []
            if unsafe and use_cats:
                names = [c for c, on in zip(self.categories, cats[i], strict=True) if on]
                if not names:  # a flagged text gets at least its most likely category
                    names = [self.categories[int(cat_logits[i].argmax())]]
            out.append({"safe": not unsafe, "severity": severity, "categories": names,
                        "score": round(float(score[i]), 6)})
        return out

    def moderate_batch(self, prompts: Sequence[Any], responses: Sequence[str | None] | None = None,
                       images: Sequence[Any] | None = None, *, sources: Sequence[str] | None = None
                       ) -> list[dict[str, Any]]:
        """One verdict ``{safe, severity, categories, score}`` per (prompt [, response] [, images])."""
        return self.verdicts_from_logits(self.logits(prompts, responses, images, sources=sources))

    def moderate(self, prompt: Any, response: str | None = None, images: Sequence[Any] | Any = None
                 ) -> dict[str, Any]:
        """The verdict on one prompt (input moderation) or prompt + response (output moderation),
        with its image(s) for an image + text guard (a path, PIL image or bytes, or a list)."""
        return self.moderate_batch([prompt], [response], [images])[0]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return np.where(x >= 0, 1.0 / (1.0 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1.0 + np.exp(-np.abs(x))))
