"""The vision-language processor: prompt + images (+ response) → model inputs.

:class:`VLMProcessor` serves LLaVA- and Qwen2-VL-style models (tiny ones built in
:mod:`saferlhf.models.tiny_vlm`, and real checkpoints: a folder with a
``vlm_processor.json``, or an HF folder with ``config.json`` + ``preprocessor_config.json``).

``Qwen2VLProcessor`` cannot be constructed without torchvision (its video processor), so
this class does what the HF processors do, for both styles, with the PIL image processors
(``CLIPImageProcessorPil``, ``SiglipImageProcessorPil``, ``Qwen2VLImageProcessorPil``): it
puts one image placeholder per image into the prompt (a ``{"type": "image"}`` content item
for chat templates, the placeholder text for plain templates), tokenises, and expands each
image token to the number of features of its image. The response is tokenised separately,
so the prompt/response boundary is a token offset.

It implements the :class:`saferlhf.processing.Processor` protocol (``encode_prompts``,
``encode_texts``, ``model_kwargs``, ``vision_logprob_kwargs``, ``same_encoding``), so trainers,
scorers, critics and samplers treat text and image+text alike.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from saferlhf.data.templates import Prompt, Template, encode_response, template_for
from saferlhf.data.tokenizers import IMAGE_PLACEHOLDER as _PLACEHOLDER

# The image tokens of both styles live with the tokenizers that carry them (the world saves one).
from saferlhf.data.tokenizers import (  # noqa: F401
    IMAGE_SPECIAL_TOKENS,
    LLAVA_IMAGE_TOKEN,
    QWEN_IMAGE_PAD,
    QWEN_VIDEO_PAD,
    QWEN_VISION_END,
    QWEN_VISION_START,
    STYLES,
)
from saferlhf.data.tokenizers import check_style as _check_style

PROCESSOR_FILE = "vlm_processor.json"
FORMAT_VERSION = 1

# The token that is expanded to the image features, per style.
_IMAGE_TOKEN = {"llava": LLAVA_IMAGE_TOKEN, "qwen2_vl": QWEN_IMAGE_PAD}
# Model types (config.json) of each style, for processors of real checkpoints.
_MODEL_TYPES = {"llava": ("llava",), "qwen2_vl": ("qwen2_vl", "qwen2_5_vl")}


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


@dataclass
class EncodedPrompts:
    """Prompts ready for generation: unpadded token ids per prompt, and for image+text the
    vision inputs of the rows (``image_inputs``) and the decoded images (``images``, one list
    per prompt, for scorers that re-encode)."""

    ids: list[list[int]]
    image_inputs: ImageInputs | None = None
    images: list[list[Any]] | None = None
    generate_kwargs: dict[str, Any] = field(default_factory=dict)


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
class TokenizerPassThrough:
    """The ids, vocabulary and decoding of the wrapped ``tokenizer``, so code that only reads ids
    takes a processor in place of a tokenizer. ``skip_special_tokens`` is the decoding default."""

    tokenizer: Any
    skip_special_tokens: bool = False

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
        kwargs.setdefault("skip_special_tokens", self.skip_special_tokens)
        return self.tokenizer.decode(ids, **kwargs)

    def batch_decode(self, ids, **kwargs) -> list[str]:
        kwargs.setdefault("skip_special_tokens", self.skip_special_tokens)
        return self.tokenizer.batch_decode(ids, **kwargs)


class VLMProcessor(TokenizerPassThrough):
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

    skip_special_tokens = True  # decoded responses never show image tokens

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
        self._image_cache: dict[str, Any] = {}

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

    def model_kwargs(self, input_ids: torch.Tensor, image_inputs: ImageInputs | None) -> dict[str, torch.Tensor]:
        """The vision keyword arguments for ``input_ids`` (any sequence holding the batch's image
        tokens, e.g. prompt + sampled response): ``pixel_values`` [+ ``image_grid_thw``,
        ``mm_token_type_ids``]; empty without images."""
        if image_inputs is None:
            return {}
        kw = image_inputs.to(input_ids.device).kwargs()
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

    def vision_logprob_kwargs(self, input_ids: torch.Tensor, image_inputs: ImageInputs | None) -> dict[str, Any]:
        """Like :meth:`logprob_kwargs`, but the images stay an :class:`ImageInputs`
        (``image_inputs=``), so :func:`~saferlhf.models.policy.forward_logprobs` can give each
        micro-batch the vision inputs of its own rows. Empty for a batch without images."""
        if image_inputs is None or image_inputs.n_images == 0:
            return {}
        kw: dict[str, Any] = {"image_inputs": image_inputs.to(input_ids.device)}
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


    # --- the Processor protocol (saferlhf.processing) --------------------------------------
    modality = "image-text"

    def load_images(self, refs: Sequence[Any], *, source: str = "") -> list[Any]:
        """Decode a row's image references (paths, bytes, PIL images), each file once per run."""
        from saferlhf.data.multimodal import load_image

        out = []
        for ref in refs:
            key = ref if isinstance(ref, str) else None
            if key is not None and key in self._image_cache:
                out.append(self._image_cache[key])
                continue
            image = load_image(ref, source=source)
            if key is not None:
                if len(self._image_cache) >= self._CACHE_LIMIT:
                    self._image_cache.clear()
                self._image_cache[key] = image
            out.append(image)
        return out

    def encode_prompts(self, prompts, images=None, *, sources=None):
        """Prompt ids with the image tokens expanded, and the rows' vision inputs. ``images``:
        each prompt's image references (loaded here; a missing or corrupt image raises
        :class:`~saferlhf.data.multimodal.ImageLoadError` naming the prompt's record)."""
        images = images if images is not None else [[] for _ in prompts]
        sources = list(sources) if sources is not None else [f"prompt {i}" for i in range(len(prompts))]
        pil = [self.load_images(refs, source=src) for refs, src in zip(images, sources, strict=True)]
        vb = self.prepare(list(prompts), pil, padding_side="left", sources=sources)
        ids = [row[m.bool()].tolist() for row, m in zip(vb["input_ids"], vb["attention_mask"])]
        return EncodedPrompts(ids, image_inputs=vb.image_inputs, images=pil)

    def encode_texts(self, prompts, responses, *, add_eos, images=None):
        """Right-padded prompt + response with each row's (already decoded) images."""
        images = images if images is not None else [[] for _ in prompts]
        sources = [f"row {i}" for i in range(len(prompts))]
        examples = [self.encode(p, imgs, text, add_eos=bool(eos), source=src)
                    for p, imgs, text, eos, src in zip(prompts, images, responses, add_eos, sources, strict=True)]
        vb = self.pad(examples, padding_side="right")
        kwargs = {k: v for k, v in vb.items() if k not in ("input_ids", "attention_mask")}
        return vb["input_ids"], vb["attention_mask"], kwargs

    def sft_examples(self, records, max_length: int, *, stage: str | None = None, model: str = "the model"):
        """The records themselves, collated with their images at batch time
        (:func:`saferlhf.data.multimodal.collate_vlm_sft`; each image file decoded once)."""
        from saferlhf.data.multimodal import collate_vlm_sft

        cache: dict = {}
        return list(records), lambda items: collate_vlm_sft(items, self, max_length=max_length, image_cache=cache)

    def pair_examples(self, pairs, first, *, max_length: int, stage: str | None = None, model: str = "the model"):
        """``(items, to_batch)`` for pairwise training: the pairs themselves, encoded with their
        image(s) at batch time (:func:`saferlhf.data.multimodal.collate_vlm_pairs`: the ``first``
        rows then the others; each image file decoded once)."""
        from saferlhf.data.multimodal import collate_vlm_pairs

        cache: dict = {}

        def to_batch(batch):
            vb = collate_vlm_pairs([p for p, _ in batch], self, first=[f for _, f in batch], max_length=max_length,
                                   image_cache=cache)
            return dict(vb)

        return list(zip(pairs, first)), to_batch

    def scoring_batches(self, prompts, responses, *, images=None, max_length: int, batch_size: int,
                        sources=None):
        """``[(rows, inputs)]``: right-padded (prompt, image(s), response) batches in input order,
        each row with its own images (references opened here, each file once; an unreadable one
        raises :class:`~saferlhf.data.multimodal.ImageLoadError` naming ``sources[i]``). The
        response is cut at ``max_length`` as in training (image tokens are never cut)."""
        images = images if images is not None else [[] for _ in prompts]
        srcs = list(sources) if sources is not None else [f"item {i}" for i in range(len(prompts))]
        batches = []
        for i in range(0, len(prompts), batch_size):
            sl = slice(i, i + batch_size)
            imgs = [self.load_images(list(refs or []), source=src) for refs, src in zip(images[sl], srcs[sl],
                                                                                      strict=True)]
            vb = self.prepare(list(prompts[sl]), imgs, list(responses[sl]), padding_side="right",
                              max_length=max_length, sources=srcs[sl])
            batches.append((list(range(i, i + len(imgs))), dict(vb)))
        return batches

    def same_encoding(self, other: Any) -> bool:
        return (isinstance(other, VLMProcessor) and other.to_dict() == self.to_dict()
                and other.tokenizer.get_vocab() == self.tokenizer.get_vocab()
                and other.eos_token_id == self.eos_token_id)

    @classmethod
    def from_hf_processor(cls, processor: Any, *, template: Template | None = None) -> VLMProcessor:
        """Wrap an in-memory HF multimodal processor (``LlavaProcessor``, ``Qwen2VLProcessor`` …):
        its tokenizer and image processor (a torchvision-backed image processor is replaced by
        its PIL twin with the same settings)."""
        tok = processor.tokenizer
        if tok.pad_token_id is None and tok.eos_token is not None:
            tok.pad_token = tok.eos_token
        ip = processor.image_processor
        if type(ip).__name__ not in _PIL_PROCESSORS:
            ip = _image_processor_from_dict(type(ip).__name__, ip.to_dict())
        name = type(processor).__name__.lower()
        style = "qwen2_vl" if "qwen" in name else ("llava" if "llava" in name else None)
        if style is None:
            raise ValueError(f"unsupported multimodal processor {type(processor).__name__}; "
                             f"supported styles: {STYLES}")
        n = getattr(processor, "num_image_tokens", None) or getattr(processor, "image_seq_length", None)
        if style == "llava" and not n:
            size = ip.crop_size if getattr(ip, "crop_size", None) else ip.size
            side = size
            if not isinstance(size, int):  # a dict or transformers' SizeDict
                get = size.get if isinstance(size, dict) else (lambda k: getattr(size, k, None))
                side = get("height") or get("shortest_edge")
            patch = getattr(processor, "patch_size", None) or 14
            n = _llava_tokens(side, patch, type(ip).__name__.lower(),
                              getattr(processor, "vision_feature_select_strategy", None) or "default")
        return cls(tok, ip, style=style, template=template, num_image_tokens=n)

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
        cfg_path = path / "config.json"
        pp = _hf_image_processor_settings(path)
        if not cfg_path.is_file() or pp is None:
            raise FileNotFoundError(
                f"{path}: no {PROCESSOR_FILE}, and not an HF VLM checkpoint (config.json + preprocessor_config.json "
                "or processor_config.json)"
            )
        cfg = json.loads(cfg_path.read_text())
        style = next((s for s, types in _MODEL_TYPES.items() if cfg.get("model_type") in types), None)
        if style is None:
            raise ValueError(f"{path}: model_type {cfg.get('model_type')!r} is not a supported VLM style {STYLES}")
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


_PIL_PROCESSORS = ("CLIPImageProcessorPil", "SiglipImageProcessorPil", "Qwen2VLImageProcessorPil")


def _hf_image_processor_settings(path: Path) -> dict[str, Any] | None:
    """The image processor settings of an HF checkpoint folder: ``preprocessor_config.json``
    (transformers 4), or the ``image_processor`` section of ``processor_config.json``
    (transformers 5); None when it has neither."""
    pre, proc = path / "preprocessor_config.json", path / "processor_config.json"
    try:
        if pre.is_file():
            return json.loads(pre.read_text())
        if proc.is_file():
            section = json.loads(proc.read_text()).get("image_processor")
            return section if isinstance(section, dict) else None
    except (OSError, ValueError):
        return None
    return None


def hf_vlm_style(path: str | os.PathLike) -> str | None:
    """The VLM style of an HF checkpoint folder as the hub ships it (``config.json`` with a
    LLaVA / Qwen2-VL ``model_type`` + its image processor's settings), else None."""
    path = Path(path)
    cfg_path = path / "config.json"
    if not cfg_path.is_file() or _hf_image_processor_settings(path) is None:
        return None
    try:
        model_type = json.loads(cfg_path.read_text()).get("model_type")
    except (OSError, ValueError):
        return None
    return next((s for s, types in _MODEL_TYPES.items() if model_type in types), None)


def is_vlm_dir(path: str | os.PathLike) -> bool:
    """True when ``path`` holds a processor written by :meth:`VLMProcessor.save_pretrained`."""
    return (Path(path) / PROCESSOR_FILE).is_file()
