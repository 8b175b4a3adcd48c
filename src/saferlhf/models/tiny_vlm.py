"""Tiny vision-language models built in code, and one processor abstraction for both styles.

Two VLM styles are supported (DESIGN §4, Safe RLHF-V):

* ``"llava"``: ``LlavaForConditionalGeneration`` = a CLIP or SigLIP vision tower + an MLP
  projector + a Llama text model. Every image becomes a *fixed* number of tokens
  (``(image_size / patch_size)²``; CLIP's CLS feature is dropped by the ``default`` feature
  strategy, SigLIP has none). Text positions follow the attention mask as for a text LM.
* ``"qwen2_vl"``: ``Qwen2VLForConditionalGeneration`` = a Qwen2-VL vision tower (patches
  merged ``merge_size × merge_size``) + a Qwen2 text model with multimodal rotary positions
  (M-RoPE). Images keep their aspect ratio (resized to multiples of ``patch_size ×
  merge_size``), so every image has its own grid ``(t, h, w)`` and ``t·h·w / merge_size²``
  tokens; images of different sizes mix in one batch. The model builds its 3-D positions
  itself from ``mm_token_type_ids`` (1 on image tokens) and ``image_grid_thw``: never pass it
  text position ids (give ``position_ids=None`` to ``forward_logprobs``).

``Qwen2VLProcessor`` cannot be constructed without torchvision (its video processor), so
:class:`VLMProcessor` does what the HF processors do, for both styles, with the PIL image
processors (``CLIPImageProcessorPil``, ``SiglipImageProcessorPil``,
``Qwen2VLImageProcessorPil``): it puts one image placeholder per image into the prompt
(a ``{"type": "image"}`` content item for chat templates, the placeholder text for plain
templates), tokenises, and expands each image token to the number of features of its image.
The response is tokenised separately, so the prompt/response boundary is a token offset.

The tiny models (≤ ~0.3 M parameters at the defaults: 64 px images, a 1-layer vision tower
with 16 × 16 px patches for LLaVA / 8 × 8 px patches merged 2 × 2 for Qwen2-VL, i.e. 16
image tokens for a 64 px image; a 2-layer / 64-hidden text model) are sized to a given
tokenizer, e.g. the word-level tokenizer of :mod:`saferlhf.data.tokenizers` plus the image tokens
added by :func:`vlm_tokenizer`. Everything runs on CPU with PIL images: forward, backward,
``generate``, ``save_pretrained`` / ``from_pretrained``.

Checkpoint layout: the model's own ``save_pretrained`` (loadable with
``AutoModelForImageTextToText`` / :func:`saferlhf.models.loading.load_causal_lm`) and
:meth:`VLMProcessor.save_pretrained` = the tokenizer files + ``vlm_processor.json`` (style,
image processor settings, image tokens). No ``preprocessor_config.json`` is written, so
``AutoProcessor`` (which needs torchvision for Qwen2-VL) is never involved and
:func:`saferlhf.models.loading.load_tokenizer` still returns the plain tokenizer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from saferlhf.data.templates import Prompt, Template, encode_response, template_for
from saferlhf.data.tokenizers import (  # noqa: F401  (re-exported)
    IMAGE_SPECIAL_TOKENS,
    LLAVA_IMAGE_TOKEN,
    QWEN_IMAGE_PAD,
    QWEN_VIDEO_PAD,
    QWEN_VISION_END,
    QWEN_VISION_START,
    STYLES,
    vlm_chat_template,
    vlm_tokenizer,
)
from saferlhf.data.tokenizers import IMAGE_PLACEHOLDER as _PLACEHOLDER
from saferlhf.data.tokenizers import check_style as _check_style

if TYPE_CHECKING:
    from transformers import (
        LlavaForConditionalGeneration,
        PreTrainedTokenizerFast,
        Qwen2VLForConditionalGeneration,
    )

PROCESSOR_FILE = "vlm_processor.json"
FORMAT_VERSION = 1

# The token that is expanded to the image features, per style.
_IMAGE_TOKEN = {"llava": LLAVA_IMAGE_TOKEN, "qwen2_vl": QWEN_IMAGE_PAD}
# Model types (config.json) of each style, for processors of real checkpoints.
_MODEL_TYPES = {"llava": ("llava",), "qwen2_vl": ("qwen2_vl", "qwen2_5_vl")}

# CLIP's normalisation, used by all three image processors here.
_MEAN = (0.48145466, 0.4578275, 0.40821073)
_STD = (0.26862954, 0.26130258, 0.27577711)


# ----------------------------------------------------------------------------- image inputs
@dataclass
class ImageInputs:
    """The vision part of a batch, with enough bookkeeping to select and repeat rows.

    ``pixel_values``: LLaVA ``(n_images, 3, H, W)``; Qwen2-VL ``(n_patches, C·T·P·P)`` (the
    patches of every image, concatenated in row order). ``image_grid_thw`` (Qwen2-VL):
    ``(n_images, 3)``. ``images_per_row``: how many images each row of the batch has (in
    order). ``patches_per_image`` (Qwen2-VL): rows of ``pixel_values`` per image.
    """

    style: str
    pixel_values: torch.Tensor | None
    images_per_row: tuple[int, ...]
    image_grid_thw: torch.Tensor | None = None
    patches_per_image: tuple[int, ...] | None = None

    @property
    def n_images(self) -> int:
        return sum(self.images_per_row)

    def kwargs(self) -> dict[str, torch.Tensor]:
        """Model keyword arguments (empty when the batch has no image)."""
        if self.pixel_values is None or self.n_images == 0:
            return {}
        out = {"pixel_values": self.pixel_values}
        if self.image_grid_thw is not None:
            out["image_grid_thw"] = self.image_grid_thw
        return out

    def to(self, device: torch.device | str) -> ImageInputs:
        return replace(
            self,
            pixel_values=None if self.pixel_values is None else self.pixel_values.to(device),
            image_grid_thw=None if self.image_grid_thw is None else self.image_grid_thw.to(device),
        )

    def select(self, rows: Sequence[int] | torch.Tensor) -> ImageInputs:
        """The images of ``rows`` (in that order; repeats allowed), e.g. a PPO mini-batch."""
        rows = [int(r) for r in (rows.tolist() if isinstance(rows, torch.Tensor) else rows)]
        first_image = [0]
        for k in self.images_per_row:
            first_image.append(first_image[-1] + k)
        images = [i for r in rows for i in range(first_image[r], first_image[r + 1])]
        per_row = tuple(self.images_per_row[r] for r in rows)
        if self.pixel_values is None or not images:
            return ImageInputs(self.style, None, per_row,
                               patches_per_image=None if self.patches_per_image is None else ())
        dev = self.pixel_values.device
        if self.patches_per_image is None:  # one pixel_values row per image
            return replace(self, pixel_values=self.pixel_values[torch.tensor(images, device=dev)],
                           images_per_row=per_row)
        starts = [0]
        for n in self.patches_per_image:
            starts.append(starts[-1] + n)
        patch_rows = [p for i in images for p in range(starts[i], starts[i + 1])]
        return replace(
            self,
            pixel_values=self.pixel_values[torch.tensor(patch_rows, device=dev)],
            image_grid_thw=self.image_grid_thw[torch.tensor(images, device=self.image_grid_thw.device)],
            images_per_row=per_row,
            patches_per_image=tuple(self.patches_per_image[i] for i in images),
        )

    def repeat_rows(self, n: int) -> ImageInputs:
        """Every row ``n`` times, consecutively (``n`` samples per prompt in a rollout)."""
        return self.select([r for r in range(len(self.images_per_row)) for _ in range(n)])


class VLMBatch(dict):
    """Model inputs (a dict: ``input_ids``, ``attention_mask``, ``pixel_values`` and for
    Qwen2-VL ``image_grid_thw``, ``mm_token_type_ids``; ``labels`` for SFT) plus bookkeeping
    attributes that are not model inputs:

    ``prompt_lengths`` (B,) tokens of each row's prompt (image tokens included);
    ``prompt_length`` the common prompt width P of a left-padded prompt-only batch (else None);
    ``image_inputs`` the :class:`ImageInputs`; ``padding_side``.
    ``model(**batch)`` works as is.
    """

    prompt_lengths: torch.Tensor
    prompt_length: int | None
    image_inputs: ImageInputs
    padding_side: str

    def to(self, device: torch.device | str) -> VLMBatch:
        out = VLMBatch({k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.items()})
        out.prompt_lengths = self.prompt_lengths
        out.prompt_length = self.prompt_length
        out.image_inputs = self.image_inputs.to(device)
        out.padding_side = self.padding_side
        return out


@dataclass
class EncodedVLM:
    """One tokenised example: ids with expanded image tokens, the prompt length, its images."""

    input_ids: list[int]
    prompt_length: int
    images: list[Any]


# ----------------------------------------------------------------------------- processor
class VLMProcessor:
    """Prompt + images (+ response) → model inputs, for LLaVA- and Qwen2-VL-style models.

    Holds the tokenizer (with the image tokens), a PIL image processor, and the prompt
    template. ``template``: default :func:`saferlhf.data.templates.template_for` (the
    tokenizer's chat template when it has one). ``num_image_tokens``: LLaVA's fixed number
    of tokens per image (required for ``llava``; ignored for ``qwen2_vl``, where it follows
    each image's grid).

    Tokenizer-like attributes (``pad_token_id``, ``eos_token_id``, ``decode`` …) are passed
    through, so text code that only reads ids works with a processor in place of a tokenizer;
    ``save_pretrained`` writes the tokenizer too.
    """

    def __init__(
        self,
        tokenizer,
        image_processor,
        *,
        style: str,
        template: Template | None = None,
        num_image_tokens: int | None = None,
    ) -> None:
        _check_style(style)
        self.style = style
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.template = template if template is not None else template_for(tokenizer)
        self.placeholder = _PLACEHOLDER[style]
        self.image_token = _IMAGE_TOKEN[style]
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
            raise ValueError(
                f"the tokenizer has no {self.image_token!r} token; add the image tokens with vlm_tokenizer()"
            )
        if style == "llava" and not num_image_tokens:
            raise ValueError("a llava-style processor needs num_image_tokens (tokens per image)")
        self.num_image_tokens = int(num_image_tokens) if style == "llava" else None
        self.merge_size = int(getattr(image_processor, "merge_size", 1) or 1) if style == "qwen2_vl" else 1
        # Caches (training loops collate the same prompts, responses and images many times):
        # token ids of rendered prompts / responses, and the processed pixels of each image
        # object (held by a weak reference: a new image with a recycled id() is not mistaken).
        self._text_cache: dict[tuple, list[int]] = {}
        self._pixel_cache: dict[int, tuple[Any, dict[str, torch.Tensor]]] = {}

    # --- tokenizer pass-through ---------------------------------------------------------
    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def eos_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def bos_token_id(self) -> int | None:
        return self.tokenizer.bos_token_id

    def __len__(self) -> int:
        return len(self.tokenizer)

    def get_vocab(self) -> dict[str, int]:
        return self.tokenizer.get_vocab()

    def decode(self, ids, **kwargs) -> str:
        kwargs.setdefault("skip_special_tokens", True)
        return self.tokenizer.decode(ids, **kwargs)

    def batch_decode(self, ids, **kwargs) -> list[str]:
        kwargs.setdefault("skip_special_tokens", True)
        return self.tokenizer.batch_decode(ids, **kwargs)

    @property
    def image_token_ids(self) -> list[int]:
        """Ids of every image special token the tokenizer has. A policy must never *sample*
        them (a generated image token has no image features: the next forward pass fails), so
        generation should get ``suppress_tokens=processor.image_token_ids``."""
        vocab = self.tokenizer.get_vocab()
        return sorted({vocab[t] for t in (*IMAGE_SPECIAL_TOKENS, self.image_token) if t in vocab})

    @property
    def uses_own_position_ids(self) -> bool:
        """True for Qwen2-VL: the model builds 3-D positions itself (pass ``position_ids=None``)."""
        return self.style == "qwen2_vl"

    # --- images -------------------------------------------------------------------------
    _CACHE_LIMIT = 100_000

    def _processed(self, image) -> dict[str, torch.Tensor]:
        """The image processor's output for one image, cached per image object."""
        import weakref

        hit = self._pixel_cache.get(id(image))
        if hit is not None and hit[0]() is image:
            return hit[1]
        out = self.image_processor([image], return_tensors="pt")
        entry = {"pixel_values": out["pixel_values"]}
        if "image_grid_thw" in out:
            entry["image_grid_thw"] = out["image_grid_thw"]
        try:
            ref = weakref.ref(image)
        except TypeError:  # not weak-referenceable: do not cache
            return entry
        if len(self._pixel_cache) >= self._CACHE_LIMIT:
            self._pixel_cache.clear()
        self._pixel_cache[id(image)] = (ref, entry)
        return entry

    def image_inputs(self, images_per_row: Sequence[Sequence[Any]]) -> ImageInputs:
        """Run the image processor on every row's PIL images (row order kept; each image object
        is processed once and its pixels reused while it lives)."""
        flat = [im for row in images_per_row for im in row]
        counts = tuple(len(row) for row in images_per_row)
        if not flat:
            return ImageInputs(self.style, None, counts)
        parts = [self._processed(im) for im in flat]
        out = {"pixel_values": torch.cat([p["pixel_values"] for p in parts])}
        if self.style != "llava":
            out["image_grid_thw"] = torch.cat([p["image_grid_thw"] for p in parts])
        pixel_values = out["pixel_values"]
        if self.style == "llava":
            return ImageInputs(self.style, pixel_values, counts)
        grid = out["image_grid_thw"].long()
        return ImageInputs(self.style, pixel_values, counts, image_grid_thw=grid,
                           patches_per_image=tuple(int(g.prod()) for g in grid))

    def tokens_per_image(self, inputs: ImageInputs) -> list[int]:
        """How many tokens each image of ``inputs`` becomes in the sequence."""
        if self.style == "llava":
            return [self.num_image_tokens] * inputs.n_images
        if inputs.image_grid_thw is None:
            return []
        return [int(g.prod()) // self.merge_size**2 for g in inputs.image_grid_thw]

    # --- text ---------------------------------------------------------------------------
    def with_image_placeholders(self, prompt: Prompt, n_images: int) -> Prompt:
        """The prompt with one image placeholder per image in its first user turn.

        Chat templates get HF content items (``[{"type": "image"}, …, {"type": "text"}]``);
        plain templates get the placeholder text before the user's words. A prompt whose text
        already holds the image token is returned unchanged (the data placed the images)."""
        if n_images == 0:
            return prompt
        messages = [dict(m) for m in prompt] if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        if any(isinstance(m.get("content"), str) and self.image_token in m["content"] for m in messages):
            return prompt
        first = next((i for i, m in enumerate(messages) if m["role"] == "user"), None)
        if first is None:
            raise ValueError("the prompt has no user turn to attach the images to")
        content = messages[first]["content"]
        if self.template.kind == "chat":
            items = [{"type": "image"} for _ in range(n_images)]
            if isinstance(content, str):
                items.append({"type": "text", "text": content})
            else:
                items.extend(c for c in content if c.get("type") != "image")
            messages[first]["content"] = items
        else:
            text = content if isinstance(content, str) else " ".join(
                c.get("text", "") for c in content if c.get("type") == "text")
            messages[first]["content"] = " ".join([self.placeholder] * n_images) + " " + text
        return messages if isinstance(prompt, list) or self.template.kind == "chat" else messages[0]["content"]

    def render_prompt(self, prompt: Prompt, n_images: int) -> str:
        """The prompt text (template applied) with one (unexpanded) placeholder per image."""
        return self.template.render(self.tokenizer, self.with_image_placeholders(prompt, n_images))

    def expand_image_tokens(self, ids: Sequence[int], counts: Sequence[int], *, source: str = "") -> list[int]:
        """Replace the k-th image token of ``ids`` by ``counts[k]`` copies of it."""
        n_found = sum(1 for t in ids if t == self.image_token_id)
        if n_found != len(counts):
            where = f"{source}: " if source else ""
            raise ValueError(
                f"{where}the prompt has {n_found} image token(s) {self.image_token!r} but {len(counts)} image(s)"
            )
        out: list[int] = []
        k = 0
        for t in ids:
            if t == self.image_token_id:
                out.extend([t] * int(counts[k]))
                k += 1
            else:
                out.append(int(t))
        return out

    def _remember(self, key: tuple, ids: list[int]) -> list[int]:
        if len(self._text_cache) >= self._CACHE_LIMIT:
            self._text_cache.clear()
        self._text_cache[key] = list(ids)
        return self._text_cache[key]

    def encode(
        self,
        prompt: Prompt,
        images: Sequence[Any],
        response: str | None = None,
        *,
        counts: Sequence[int] | None = None,
        add_eos: bool = True,
        max_length: int | None = None,
        source: str = "",
    ) -> EncodedVLM:
        """Token ids of prompt (+ response, + EOS) with the image tokens expanded.

        ``counts``: tokens per image (computed from the images when not given). With
        ``max_length`` the response is truncated; a prompt that does not fit is an error
        (image tokens are never cut: the features would not match)."""
        images = list(images)
        if counts is None:
            counts = self.tokens_per_image(self.image_inputs([images]))
        key = ("prompt", prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True), len(images))
        p = self._text_cache.get(key)
        if p is None:
            text = self.render_prompt(prompt, len(images))
            p = self._remember(key, self.tokenizer(text, add_special_tokens=False)["input_ids"])
        p = self.expand_image_tokens(p, counts, source=source)
        ids = list(p)
        if response is not None:
            rkey = ("response", response, bool(add_eos))
            r = self._text_cache.get(rkey)
            if r is None:
                r = self._remember(rkey, encode_response(self.tokenizer, self.template, response, add_eos=add_eos))
            ids += r
        if max_length is not None and len(ids) > max_length:
            if len(p) >= max_length:
                where = f"{source}: " if source else ""
                raise ValueError(
                    f"{where}the prompt is {len(p)} tokens ({sum(counts)} of them image tokens), longer than "
                    f"max_length={max_length}; raise max_length or use smaller images"
                )
            ids = ids[:max_length]
        return EncodedVLM(ids, len(p), images)

    # --- batches ------------------------------------------------------------------------
    def mm_token_type_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """1 on image tokens, 0 elsewhere (what Qwen2-VL's M-RoPE needs with ``image_grid_thw``)."""
        return (input_ids == self.image_token_id).to(torch.int32)

    def model_kwargs(self, input_ids: torch.Tensor, image_inputs: ImageInputs) -> dict[str, torch.Tensor]:
        """The vision keyword arguments for ``input_ids`` (any sequence holding the batch's image
        tokens, e.g. prompt + sampled response): ``pixel_values`` [+ ``image_grid_thw``,
        ``mm_token_type_ids``]."""
        kw = image_inputs.kwargs()
        if self.style == "qwen2_vl" and kw:
            kw["mm_token_type_ids"] = self.mm_token_type_ids(input_ids)
        return kw

    def logprob_kwargs(self, input_ids: torch.Tensor, image_inputs: ImageInputs) -> dict[str, Any]:
        """Keyword arguments for :func:`saferlhf.models.policy.forward_logprobs` on sequences that
        hold the batch's images: the vision kwargs, and ``position_ids=None`` for Qwen2-VL
        (3-D positions from the model; LLaVA keeps the default ``cumsum(mask) − 1``)."""
        kw: dict[str, Any] = dict(self.model_kwargs(input_ids, image_inputs))
        if self.uses_own_position_ids:
            kw["position_ids"] = None
        return kw

    def vision_logprob_kwargs(self, input_ids: torch.Tensor, image_inputs: ImageInputs) -> dict[str, Any]:
        """Like :meth:`logprob_kwargs`, but the images stay an :class:`ImageInputs`
        (``image_inputs=``), so :func:`~saferlhf.models.policy.forward_logprobs` can give each
        micro-batch the vision inputs of its own rows. Empty for a batch without images."""
        if image_inputs is None or image_inputs.n_images == 0:
            return {}
        kw: dict[str, Any] = {"image_inputs": image_inputs}
        if self.style == "qwen2_vl":
            kw["mm_token_type_ids"] = self.mm_token_type_ids(input_ids)
        if self.uses_own_position_ids:
            kw["position_ids"] = None
        return kw

    def pad(self, examples: Sequence[EncodedVLM], *, padding_side: str = "right",
            image_inputs: ImageInputs | None = None) -> VLMBatch:
        """Pad encoded examples into a :class:`VLMBatch` (left or right padding)."""
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if not examples:
            raise ValueError("no examples to batch")
        B = len(examples)
        L = max(len(e.input_ids) for e in examples)
        ids = torch.full((B, L), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((B, L), dtype=torch.long)
        for i, e in enumerate(examples):
            n = len(e.input_ids)
            sl = slice(0, n) if padding_side == "right" else slice(L - n, L)
            ids[i, sl] = torch.as_tensor(e.input_ids, dtype=torch.long)
            mask[i, sl] = 1
        if image_inputs is None:
            image_inputs = self.image_inputs([e.images for e in examples])
        batch = VLMBatch(input_ids=ids, attention_mask=mask, **self.model_kwargs(ids, image_inputs))
        batch.prompt_lengths = torch.tensor([e.prompt_length for e in examples], dtype=torch.long)
        only_prompts = all(e.prompt_length == len(e.input_ids) for e in examples)
        batch.prompt_length = L if (only_prompts and padding_side == "left") else None
        batch.image_inputs = image_inputs
        batch.padding_side = padding_side
        return batch

    def prepare(
        self,
        prompts: Sequence[Prompt],
        images: Sequence[Any],
        responses: Sequence[str] | None = None,
        *,
        padding_side: str | None = None,
        add_eos: bool = True,
        max_length: int | None = None,
        sources: Sequence[str] | None = None,
    ) -> VLMBatch:
        """Batch ``prompts`` with their ``images`` (per prompt: one PIL image, a list of them, or
        None) and optionally ``responses``.

        ``padding_side``: default ``"left"`` for prompts alone (generation: every row's prompt
        ends at column P = ``batch.prompt_length``), ``"right"`` with responses (training).
        Returns a :class:`VLMBatch`: ``input_ids``, ``attention_mask``, ``pixel_values`` and for
        Qwen2-VL ``image_grid_thw`` + ``mm_token_type_ids``; ``batch.prompt_lengths``.
        """
        if len(images) != len(prompts) or (responses is not None and len(responses) != len(prompts)):
            raise ValueError(
                f"{len(prompts)} prompts, {len(images)} image entries"
                + ("" if responses is None else f", {len(responses)} responses")
            )
        rows = [[] if im is None else (list(im) if isinstance(im, (list, tuple)) else [im]) for im in images]
        image_inputs = self.image_inputs(rows)
        counts = self.tokens_per_image(image_inputs)
        examples = []
        k = 0
        for i, (prompt, row) in enumerate(zip(prompts, rows, strict=True)):
            c = counts[k : k + len(row)]
            k += len(row)
            examples.append(self.encode(
                prompt, row, None if responses is None else responses[i], counts=c, add_eos=add_eos,
                max_length=max_length, source=sources[i] if sources is not None else f"row {i}",
            ))
        side = padding_side or ("left" if responses is None else "right")
        return self.pad(examples, padding_side=side, image_inputs=image_inputs)

    __call__ = prepare

    # --- save / load --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        ip = self.image_processor
        return {
            "format_version": FORMAT_VERSION,
            "style": self.style,
            "image_processor_class": type(ip).__name__,
            "image_processor": _jsonable(ip.to_dict()),
            "num_image_tokens": self.num_image_tokens,
            "image_token": self.image_token,
            "placeholder": self.placeholder,
            "template": self.template.to_dict(),
        }

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Write the tokenizer and ``vlm_processor.json`` into ``save_directory``."""
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(str(out), **kwargs)
        (out / PROCESSOR_FILE).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, template: Template | None = None) -> VLMProcessor:
        """Load a processor saved by :meth:`save_pretrained`, or build one for a real HF VLM
        checkpoint (LLaVA / Qwen2-VL: ``config.json`` + ``preprocessor_config.json`` + tokenizer)."""
        from transformers import AutoTokenizer

        path = Path(path)
        tok = AutoTokenizer.from_pretrained(str(path))
        if tok.pad_token_id is None and tok.eos_token is not None:
            tok.pad_token = tok.eos_token
        meta_path = path / PROCESSOR_FILE
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            ip = _image_processor_from_dict(meta["image_processor_class"], meta["image_processor"])
            tmpl = template or Template.from_dict(meta.get("template"))
            return cls(tok, ip, style=meta["style"], template=tmpl, num_image_tokens=meta.get("num_image_tokens"))
        return cls._from_hf_checkpoint(path, tok, template)

    @classmethod
    def _from_hf_checkpoint(cls, path: Path, tok, template: Template | None) -> VLMProcessor:
        cfg_path, pp_path = path / "config.json", path / "preprocessor_config.json"
        if not (cfg_path.is_file() and pp_path.is_file()):
            raise FileNotFoundError(
                f"{path}: no {PROCESSOR_FILE}, and not an HF VLM checkpoint (config.json + preprocessor_config.json)"
            )
        cfg = json.loads(cfg_path.read_text())
        style = next((s for s, types in _MODEL_TYPES.items() if cfg.get("model_type") in types), None)
        if style is None:
            raise ValueError(f"{path}: model_type {cfg.get('model_type')!r} is not a supported VLM style {STYLES}")
        pp = json.loads(pp_path.read_text())
        if style == "qwen2_vl":
            ip = _image_processor_from_dict("Qwen2VLImageProcessorPil", pp)
            return cls(tok, ip, style=style, template=template)
        vision = cfg.get("vision_config") or {}
        vtype = vision.get("model_type", "clip_vision_model")
        ip = _image_processor_from_dict("SiglipImageProcessorPil" if "siglip" in vtype else "CLIPImageProcessorPil", pp)
        n = cfg.get("image_seq_length") or _llava_tokens(vision.get("image_size", 336), vision.get("patch_size", 14),
                                                          vtype, cfg.get("vision_feature_select_strategy", "default"))
        return cls(tok, ip, style=style, template=template, num_image_tokens=n)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=lambda o: int(o) if hasattr(o, "__int__") else str(o)))


def _image_processor_from_dict(class_name: str, d: dict[str, Any]):
    import transformers

    known = {"CLIPImageProcessorPil", "SiglipImageProcessorPil", "Qwen2VLImageProcessorPil"}
    name = class_name if class_name in known else {
        "CLIPImageProcessor": "CLIPImageProcessorPil", "SiglipImageProcessor": "SiglipImageProcessorPil",
        "Qwen2VLImageProcessor": "Qwen2VLImageProcessorPil",
    }.get(class_name, class_name)
    if name not in known:
        raise ValueError(f"unsupported image processor {class_name!r}")
    kwargs = {k: v for k, v in d.items() if k not in ("image_processor_type", "processor_class", "_processor_class")}
    for key in ("image_mean", "image_std"):
        if isinstance(kwargs.get(key), list):
            kwargs[key] = tuple(kwargs[key])
    return getattr(transformers, name)(**kwargs)


def _llava_tokens(image_size: int, patch_size: int, vision_type: str, strategy: str) -> int:
    n = (int(image_size) // int(patch_size)) ** 2
    has_cls = "siglip" not in vision_type
    return n + 1 if (has_cls and strategy == "full") else n


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


def is_vlm_dir(path: str | os.PathLike) -> bool:
    """True when ``path`` holds a processor written by :meth:`VLMProcessor.save_pretrained`."""
    return (Path(path) / PROCESSOR_FILE).is_file()


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


def load_processor(path: str | os.PathLike):
    """The :class:`VLMProcessor` of a VLM checkpoint folder (``vlm_processor.json``), else the
    plain tokenizer (:func:`saferlhf.models.loading.load_tokenizer`): what every stage reads
    its inputs with."""
    if is_vlm_dir(path):
        return VLMProcessor.from_pretrained(path)
    from saferlhf.models.loading import load_tokenizer

    return load_tokenizer(path)
