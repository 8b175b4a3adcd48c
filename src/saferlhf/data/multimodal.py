"""Collation of (prompt, image, response) examples for a vision-language model.

The image-text counterpart of the text collators (``trainers/sft.py:collate_sft``,
the text processor's ``pair_examples``, the rollout's left-padded prompts), built on
:class:`saferlhf.models.tiny_vlm.VLMProcessor` (template, image placeholders, image-token
expansion, padding) for LLaVA- and Qwen2-VL-style models:

* :func:`collate_vlm_sft` — right-padded prompt + response (+ EOS) with ``labels`` on the
  response tokens only (``-100`` on the prompt, its image tokens and the padding).
* :func:`collate_vlm_pairs` — both responses of every pair in one right-padded ``2B`` batch
  (first the response named by ``first``, default ``a``, of every pair, then the other), each
  row with its pair's image(s): the layout the score-model losses read.
* :func:`collate_vlm_prompts` — left-padded prompts for generation: every prompt ends at column
  ``batch.prompt_length``.

Every collator returns a :class:`saferlhf.models.tiny_vlm.VLMBatch`: a dict of model inputs
(``input_ids``, ``attention_mask``, ``pixel_values`` [, ``image_grid_thw``,
``mm_token_type_ids``] [, ``labels``]) with ``prompt_lengths`` and ``image_inputs`` attached.

Records are the canonical ones (``SFTRecord``, ``PreferencePair``, ``PromptRecord``) or plain
``(prompt, images[, response])`` tuples. Images are opened here (``schema.open_image``) and
converted to RGB; a missing or unreadable image raises :class:`ImageLoadError` naming the
record (its ``source``, e.g. ``pairs_train.jsonl:12``) and the image. ``image_cache`` (a dict
the caller keeps for a run) decodes each image file once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from saferlhf.data.schema import PreferencePair, PromptRecord, SFTRecord, open_image

IGNORE_INDEX = -100


class ImageLoadError(ValueError):
    """An image of a record is missing or cannot be decoded (the message names the record)."""


def _describe(ref: Any) -> str:
    if isinstance(ref, dict):
        return str(ref.get("path") or "<embedded image bytes>")
    if isinstance(ref, (bytes, bytearray, memoryview)):
        return "<embedded image bytes>"
    if hasattr(ref, "size") and hasattr(ref, "mode"):
        return "<PIL image>"
    return str(ref)


def load_image(ref: Any, *, source: str = "") -> Any:
    """Open one image reference as a decoded RGB PIL image; errors name ``source`` and the image."""
    where = f"{source}: " if source else ""
    try:
        image = open_image(ref)
        image.load()  # Image.open is lazy: decode now, so a truncated file fails here
        return image.convert("RGB") if image.mode != "RGB" else image
    except FileNotFoundError:
        raise ImageLoadError(f"{where}image {_describe(ref)} does not exist") from None
    except Exception as error:  # noqa: BLE001 -- PIL raises many types (UnidentifiedImageError, OSError, ...)
        raise ImageLoadError(
            f"{where}image {_describe(ref)} cannot be read ({type(error).__name__}: {error})"
        ) from None


def load_record_images(record: Any, *, source: str | None = None, cache: dict | None = None) -> list[Any]:
    """The decoded RGB images of a record (``record.images``), in order.

    ``cache``: a dict kept by the caller (e.g. for a training run): decoded images by path,
    so an image shared by many records (the world's pairs and SFT data) is decoded once."""
    src = source if source is not None else getattr(record, "source", "") or ""
    out = []
    for ref in getattr(record, "images", ()):
        if cache is not None and isinstance(ref, str):
            if ref not in cache:
                cache[ref] = load_image(ref, source=src)
            out.append(cache[ref])
        else:
            out.append(load_image(ref, source=src))
    return out


def _source(record: Any, i: int) -> str:
    return getattr(record, "source", "") or f"example {i}"


def _prompt_images_response(record: Any, i: int, cache: dict | None = None) -> tuple[Any, list[Any], str | None, str]:
    """(prompt, decoded images, response or None, source) of a record or a tuple."""
    if isinstance(record, SFTRecord):
        prompt, response = record.prompt_and_response()
        return prompt, load_record_images(record, cache=cache), response, _source(record, i)
    if isinstance(record, PromptRecord):
        return record.prompt, load_record_images(record, cache=cache), None, _source(record, i)
    if isinstance(record, tuple):
        prompt, images = record[0], record[1]
        refs = [] if images is None else (list(images) if isinstance(images, (list, tuple)) else [images])
        src = f"example {i}"
        return prompt, [load_image(r, source=src) for r in refs], (record[2] if len(record) > 2 else None), src
    raise TypeError(f"cannot collate a {type(record).__name__}; give SFT/prompt records or (prompt, images[, response]) tuples")


def collate_vlm_sft(records: Sequence[Any], processor, *, max_length: int | None = None,
                    image_cache: dict | None = None):
    """SFT batch: right-padded prompt + response + EOS, ``labels`` = ids on response tokens
    (EOS included), ``-100`` elsewhere. ``records``: ``SFTRecord`` (multi-turn: the last
    assistant turn is the target) or ``(prompt, images, response)`` tuples."""
    import torch

    prompts, images, responses, sources = [], [], [], []
    for i, r in enumerate(records):
        prompt, imgs, response, src = _prompt_images_response(r, i, image_cache)
        if response is None:
            raise ValueError(f"{src}: an SFT example needs a response")
        prompts.append(prompt)
        images.append(imgs)
        responses.append(response)
        sources.append(src)
    batch = processor.prepare(prompts, images, responses, padding_side="right", max_length=max_length,
                              sources=sources)
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = IGNORE_INDEX
    cols = torch.arange(labels.shape[1])
    labels[cols[None, :] < batch.prompt_lengths[:, None]] = IGNORE_INDEX
    batch["labels"] = labels
    return batch


def collate_vlm_pairs(
    pairs: Sequence[PreferencePair],
    processor,
    *,
    first: Sequence[str] | str = "a",
    max_length: int | None = None,
    image_cache: dict | None = None,
):
    """Score-model batch of ``2B`` right-padded rows: rows ``0..B-1`` hold, for every pair, the
    response named by ``first`` (``"a"``/``"b"``, one value or one per pair: e.g. the trainer's
    ``hi`` side), rows ``B..2B-1`` the other response; each row carries its pair's images (each
    image is decoded once per pair)."""
    firsts = [first] * len(pairs) if isinstance(first, str) else list(first)
    if len(firsts) != len(pairs):
        raise ValueError(f"{len(firsts)} 'first' choices for {len(pairs)} pairs")
    prompts, images, hi, lo, sources = [], [], [], [], []
    for i, (p, side) in enumerate(zip(pairs, firsts, strict=True)):
        if side not in ("a", "b"):
            raise ValueError(f"first must be 'a' or 'b', got {side!r}")
        src = _source(p, i)
        prompts.append(p.prompt)
        images.append(load_record_images(p, source=src, cache=image_cache))
        hi.append(p.response(side))
        lo.append(p.response("b" if side == "a" else "a"))
        sources.append(src)
    return processor.prepare(prompts + prompts, images + images, hi + lo, padding_side="right",
                             max_length=max_length, sources=sources + sources)


def collate_vlm_prompts(records: Sequence[Any], processor, *, image_cache: dict | None = None):
    """Generation batch: left-padded prompts (``batch.prompt_length`` = P, the column where every
    response starts). ``records``: ``PromptRecord``, ``SFTRecord`` / ``PreferencePair`` (their
    prompt) or ``(prompt, images)`` tuples."""
    prompts, images, sources = [], [], []
    for i, r in enumerate(records):
        if isinstance(r, PreferencePair):
            prompt, imgs, src = r.prompt, load_record_images(r, cache=image_cache), _source(r, i)
        else:
            prompt, imgs, _, src = _prompt_images_response(r, i, image_cache)
        prompts.append(prompt)
        images.append(imgs)
        sources.append(src)
    return processor.prepare(prompts, images, None, padding_side="left", sources=sources)
