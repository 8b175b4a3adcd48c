"""Tiny vision-language models built in code (Safe RLHF-V at CPU scale).

Two VLM styles are supported (DESIGN §4):

* ``"llava"``: ``LlavaForConditionalGeneration`` = a CLIP or SigLIP vision tower + an MLP
  projector + a Llama text model. Every image becomes a *fixed* number of tokens
  (``(image_size / patch_size)²``; CLIP's CLS feature is dropped by the ``default`` feature
  strategy, SigLIP has none). Text positions follow the attention mask as for a text LM.
* ``"qwen2_vl"``: ``Qwen2VLForConditionalGeneration`` = a Qwen2-VL vision tower (patches
  merged ``merge_size × merge_size``) + a Qwen2 text model with multimodal rotary positions
  (M-RoPE). Images keep their aspect ratio, so every image has its own grid ``(t, h, w)`` and
  ``t·h·w / merge_size²`` tokens. The model builds its 3-D positions itself from
  ``mm_token_type_ids`` and ``image_grid_thw``: never pass it text position ids.

The processor of both styles is :class:`saferlhf.processing.vlm.VLMProcessor` (its names are
re-exported here). The tiny models (≤ ~0.3 M parameters at the defaults: 64 px images, a
1-layer vision tower with 16 × 16 px patches for LLaVA / 8 × 8 px patches merged 2 × 2 for
Qwen2-VL, i.e. 16 image tokens for a 64 px image; a 2-layer / 64-hidden text model) are sized
to a given tokenizer, e.g. the word-level tokenizer of :mod:`saferlhf.data.tokenizers` plus
the image tokens added by :func:`vlm_tokenizer`. Everything runs on CPU with PIL images.

Checkpoint layout: the model's own ``save_pretrained`` (loadable with
``AutoModelForImageTextToText``) and :meth:`VLMProcessor.save_pretrained` = the tokenizer
files + ``vlm_processor.json``. Freezing of parts (``vision_tower``, ``projector``,
``language_model``) is :func:`freeze_vlm_parts`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from saferlhf.data.tokenizers import vlm_chat_template, vlm_tokenizer  # noqa: F401 - re-exported
from saferlhf.processing import load_processor  # noqa: F401 - re-exported
from saferlhf.processing.vlm import (  # noqa: F401 - the processor's names, re-exported for old imports
    _IMAGE_TOKEN,
    _PLACEHOLDER,
    IMAGE_SPECIAL_TOKENS,
    LLAVA_IMAGE_TOKEN,
    PROCESSOR_FILE,
    QWEN_IMAGE_PAD,
    QWEN_VIDEO_PAD,
    QWEN_VISION_END,
    QWEN_VISION_START,
    STYLES,
    EncodedVLM,
    ImageInputs,
    VLMBatch,
    VLMProcessor,
    _check_style,
    is_vlm_dir,
)

if TYPE_CHECKING:
    from transformers import (
        LlavaForConditionalGeneration,
        PreTrainedTokenizerFast,
        Qwen2VLForConditionalGeneration,
    )

# CLIP's normalisation, used by all three image processors here.
_MEAN = (0.48145466, 0.4578275, 0.40821073)
_STD = (0.26862954, 0.26130258, 0.27577711)


# ----------------------------------------------------------------------------- models
def _text_ids(tokenizer) -> dict[str, int | None]:
    return {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id}


def _set_generation_ids(model, tokenizer) -> None:
    gc = model.generation_config
    gc.pad_token_id, gc.bos_token_id, gc.eos_token_id = (
        tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id)


def tiny_llava(
    tokenizer: PreTrainedTokenizerFast,
    *,
    vision: str = "clip",
    image_size: int = 64,
    patch_size: int = 16,
    vision_hidden_size: int = 32,
    vision_layers: int = 1,
    vision_heads: int = 2,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    max_position_embeddings: int = 256,
    seed: int = 0,
) -> tuple[LlavaForConditionalGeneration, VLMProcessor]:
    """A tiny LLaVA-style VLM (``vision``: ``"clip"`` or ``"siglip"`` tower + Llama text model)
    sized to ``tokenizer`` (image tokens and the LLaVA chat template are added to it), and its
    :class:`VLMProcessor`. ``(image_size / patch_size)²`` tokens per image."""
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        SiglipImageProcessorPil,
        SiglipVisionConfig,
    )

    from saferlhf.models.tiny import tiny_llama_config

    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    tok = vlm_tokenizer(tokenizer, "llava")
    common = {"hidden_size": vision_hidden_size, "intermediate_size": 2 * vision_hidden_size,
              "num_hidden_layers": vision_layers, "num_attention_heads": vision_heads,
              "image_size": image_size, "patch_size": patch_size}
    if vision == "clip":
        vcfg = CLIPVisionConfig(projection_dim=vision_hidden_size, **common)
        strategy = "default"  # drop CLS: exactly (image_size / patch_size)² tokens
        ip = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                   crop_size={"height": image_size, "width": image_size},
                                   image_mean=_MEAN, image_std=_STD)
    elif vision == "siglip":
        vcfg = SiglipVisionConfig(**common)
        strategy = "full"  # SigLIP has no CLS token
        ip = SiglipImageProcessorPil(size={"height": image_size, "width": image_size},
                                     image_mean=_MEAN, image_std=_STD)
    else:
        raise ValueError(f"vision must be 'clip' or 'siglip', got {vision!r}")
    n_tokens = (image_size // patch_size) ** 2
    cfg = LlavaConfig(
        vision_config=vcfg,
        text_config=tiny_llama_config(tok, hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
                                      max_position_embeddings=max_position_embeddings),
        image_token_id=tok.convert_tokens_to_ids(LLAVA_IMAGE_TOKEN),
        vision_feature_layer=-1,
        vision_feature_select_strategy=strategy,
        image_seq_length=n_tokens,
        projector_hidden_act="gelu",
        **_text_ids(tok),
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(cfg)
    _set_generation_ids(model, tok)
    return model, VLMProcessor(tok, ip, style="llava", num_image_tokens=n_tokens)


def tiny_qwen2_vl(
    tokenizer: PreTrainedTokenizerFast,
    *,
    patch_size: int = 8,
    merge_size: int = 2,
    min_pixels: int = 32 * 32,
    max_pixels: int = 96 * 96,
    vision_hidden_size: int = 32,
    vision_layers: int = 1,
    vision_heads: int = 2,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    max_position_embeddings: int = 512,
    seed: int = 0,
) -> tuple[Qwen2VLForConditionalGeneration, VLMProcessor]:
    """A tiny Qwen2-VL-style VLM sized to ``tokenizer`` (image tokens and the Qwen chat template
    are added to it), and its :class:`VLMProcessor` (``Qwen2VLImageProcessorPil``).

    Images are resized to multiples of ``patch_size · merge_size`` px within
    [``min_pixels``, ``max_pixels``] keeping their aspect ratio: a 64 × 64 image gives an 8 × 8
    patch grid and 16 tokens, a 80 × 48 one 10 × 6 patches and 15 tokens."""
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessorPil,
    )

    tok = vlm_tokenizer(tokenizer, "qwen2_vl")
    head_dim = hidden_size // num_heads
    if head_dim % 2 or head_dim < 8:
        raise ValueError(f"hidden_size / num_heads = {head_dim} must be even and >= 8 for M-RoPE")
    half = head_dim // 2
    t = max(1, half // 4)
    h = (half - t) // 2
    section = [t, h, half - t - h]  # temporal, height, width rotary sections (sum = head_dim / 2)
    ids = {name: tok.convert_tokens_to_ids(t_) for name, t_ in (
        ("image_token_id", QWEN_IMAGE_PAD), ("video_token_id", QWEN_VIDEO_PAD),
        ("vision_start_token_id", QWEN_VISION_START), ("vision_end_token_id", QWEN_VISION_END))}
    cfg = Qwen2VLConfig(
        vision_config={"depth": vision_layers, "embed_dim": vision_hidden_size, "hidden_size": hidden_size,
                       "num_heads": vision_heads, "mlp_ratio": 2, "in_channels": 3, "patch_size": patch_size,
                       "spatial_merge_size": merge_size, "temporal_patch_size": 2},
        text_config=dict(vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=num_layers, num_attention_heads=num_heads,
                         num_key_value_heads=num_heads, max_position_embeddings=max_position_embeddings,
                         rope_parameters={"rope_type": "default", "mrope_section": section, "rope_theta": 10000.0},
                         **_text_ids(tok)),
        **ids,
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(cfg)
    _set_generation_ids(model, tok)
    ip = Qwen2VLImageProcessorPil(patch_size=patch_size, merge_size=merge_size, temporal_patch_size=2,
                                  min_pixels=min_pixels, max_pixels=max_pixels, image_mean=_MEAN, image_std=_STD)
    return model, VLMProcessor(tok, ip, style="qwen2_vl")


def tiny_vlm(style: str, tokenizer: PreTrainedTokenizerFast, **kwargs: Any):
    """``(model, processor)`` of the given style: ``"llava"`` (:func:`tiny_llava`, also
    ``"llava-siglip"``) or ``"qwen2_vl"`` (:func:`tiny_qwen2_vl`)."""
    if style in ("llava", "llava-clip"):
        return tiny_llava(tokenizer, **kwargs)
    if style == "llava-siglip":
        return tiny_llava(tokenizer, vision="siglip", **kwargs)
    if style in ("qwen2_vl", "qwen2-vl"):
        return tiny_qwen2_vl(tokenizer, **kwargs)
    raise ValueError(f"unknown VLM style {style!r}; choose llava, llava-siglip or qwen2_vl")


def save_vlm(model, processor: VLMProcessor, out: str | os.PathLike) -> Path:
    """``model.save_pretrained`` + ``processor.save_pretrained`` into one folder."""
    out = Path(out)
    model.save_pretrained(str(out))
    processor.save_pretrained(out)
    return out


def load_vlm(path: str | os.PathLike, *, dtype: torch.dtype | str | None = None):
    """``(model, processor)`` from a folder written by :func:`save_vlm` (or an HF VLM checkpoint)."""
    from transformers import AutoModelForImageTextToText

    kw = {} if dtype is None else {"dtype": dtype}
    model = AutoModelForImageTextToText.from_pretrained(str(path), **kw)
    return model, VLMProcessor.from_pretrained(path)


# ----------------------------------------------------------------------------- parts / freezing
VLM_PARTS = ("vision_tower", "projector", "language_model")
"""The parts of a VLM that can be frozen (config option ``freeze: [...]``)."""

# Attribute names of each part on the transformers base models (LlavaModel: vision_tower,
# multi_modal_projector, language_model; Qwen2VLModel: visual (whose ``merger`` is the
# projector), language_model). Looked up by name, so other VLM classes with the same layout work.
_VISION_NAMES = ("vision_tower", "visual", "vision_model", "vision_encoder")
_PROJECTOR_NAMES = ("multi_modal_projector", "mm_projector", "connector", "merger")
_LANGUAGE_NAMES = ("language_model", "text_model")


def _base_of(model):
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
    inner = getattr(inner, "module", inner)  # DDP
    return getattr(inner, "model", None) if hasattr(inner, "lm_head") else inner, inner


def vlm_parts(model) -> dict[str, list[torch.nn.Module]]:
    """The modules of each part of a VLM (a ``*ForConditionalGeneration`` model, its base model,
    or a :class:`~saferlhf.models.score_model.ScoreModel` on one): ``vision_tower`` (without the
    projector when the projector sits inside it, as Qwen2-VL's ``merger``), ``projector``,
    ``language_model`` (+ the LM head of a causal LM). A text model has no vision parts."""
    if hasattr(model, "score_head") and hasattr(model, "backbone"):
        model = model.backbone
    base, top = _base_of(model)
    base = base if base is not None else top
    def find(owner, names):
        return next((getattr(owner, n) for n in names if isinstance(getattr(owner, n, None), torch.nn.Module)), None)

    vision = find(base, _VISION_NAMES)
    projector = find(base, _PROJECTOR_NAMES) or (find(vision, _PROJECTOR_NAMES) if vision is not None else None)
    language = find(base, _LANGUAGE_NAMES)
    parts: dict[str, list[torch.nn.Module]] = {"vision_tower": [], "projector": [], "language_model": []}
    if vision is not None:
        parts["vision_tower"].append(vision)
    if projector is not None:
        parts["projector"].append(projector)
    if language is not None:
        parts["language_model"].append(language)
        head = getattr(top, "lm_head", None)
        if isinstance(head, torch.nn.Module):
            parts["language_model"].append(head)
    return parts


def freeze_vlm_parts(model, freeze: Sequence[str]) -> dict[str, int]:
    """Freeze (``requires_grad=False``) the named parts of a VLM: any of :data:`VLM_PARTS`.

    The projector keeps its own setting when it sits inside the vision tower (freezing the tower
    of Qwen2-VL leaves its ``merger`` trainable unless ``projector`` is named too). Returns the
    number of trainable parameters per part afterwards (and ``other``: e.g. a score head).
    Raises ``ValueError`` for an unknown part name, or a vision part asked of a text model."""
    freeze = list(freeze or [])
    unknown = sorted(set(freeze) - set(VLM_PARTS))
    if unknown:
        raise ValueError(f"unknown part(s) to freeze {unknown}; choose from {list(VLM_PARTS)}")
    parts = vlm_parts(model)
    missing = [p for p in freeze if not parts[p]]
    if missing:
        raise ValueError(f"cannot freeze {missing}: {type(model).__name__} has no such part "
                         "(vision_tower / projector exist only in vision-language models)")
    projector_ids = {id(p) for m in parts["projector"] for p in m.parameters()}
    for name in ("vision_tower", "language_model", "projector"):
        if name not in freeze:
            continue
        for module in parts[name]:
            for p in module.parameters():
                if name == "vision_tower" and id(p) in projector_ids:
                    continue
                p.requires_grad_(False)
    seen: set[int] = set()
    counts: dict[str, int] = {}
    for name in ("projector", "vision_tower", "language_model"):
        n = 0
        for module in parts[name]:
            for p in module.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    n += p.numel() if p.requires_grad else 0
        counts[name] = n
    counts["other"] = sum(p.numel() for p in model.parameters() if p.requires_grad and id(p) not in seen)
    return counts


def is_vlm_model(model) -> bool:
    """True when ``model`` (or a ScoreModel's backbone) has a vision tower."""
    return bool(vlm_parts(model)["vision_tower"])
