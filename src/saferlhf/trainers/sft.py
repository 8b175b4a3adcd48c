"""Supervised fine-tuning: token cross-entropy on response tokens only.

``saferlhf sft --data FILE --out DIR [--model tiny|DIR] [--tokenizer DIR]``. With
``--model tiny`` a tiny Llama-style LM sized to the tokenizer's vocabulary is trained from
scratch (the verifiable world); otherwise any causal LM folder, optionally with LoRA.

Vision-language models (Safe RLHF-V): ``--model tiny-llava`` / ``tiny-llava-siglip`` /
``tiny-qwen2_vl`` build a tiny VLM of that style sized to ``--tokenizer``
(:func:`saferlhf.models.tiny_vlm.tiny_vlm`), and a VLM folder (one with a
``VLMProcessor``, e.g. written by :func:`~saferlhf.models.tiny_vlm.save_vlm`) trains through
its own transformers class. Records are collated with their images
(:func:`saferlhf.data.multimodal.collate_vlm_sft`; a record without an image is plain text);
``--freeze vision_tower,projector,language_model`` keeps parts of the VLM fixed. A missing or
unreadable image stops the run with an error naming the record.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, NamedTuple

import torch

from saferlhf.config import ConfigError
from saferlhf.config.stages import SFTConfig
from saferlhf.data.templates import Template, template_for
from saferlhf.losses import sft_loss
from saferlhf.models.checkpoint import load_template, save_policy
from saferlhf.models.loading import apply_lora, load_causal_lm, load_tokenizer
from saferlhf.models.tiny import tiny_llama
from saferlhf.models.tiny_vlm import VLMProcessor, freeze_vlm_parts, load_processor, tiny_vlm
from saferlhf.trainers.common import (
    encode_prompt_responses,
    make_accelerator,
    pad_sequences,
    seed_everything,
)
from saferlhf.trainers.loop import run_supervised_loop

IGNORE = -100


def lora_spec(cfg) -> dict | None:
    """LoRA arguments for :func:`apply_lora` from a config's ``lora_*`` keys (None: full FT)."""
    if not cfg.lora_r:
        return None
    return {"r": cfg.lora_r, "alpha": cfg.lora_alpha, "dropout": getattr(cfg, "lora_dropout", 0.0),
            "target_modules": list(cfg.lora_targets) or "all-linear"}


class SFTExample(NamedTuple):
    """One encoded demonstration.

    ``input_ids``: prompt + response (+ EOS), cut at ``max_length``. ``prompt_length``: where
    the last assistant turn starts (everything from there is a target). ``spans``: the
    ``[start, end)`` token ranges of the earlier assistant turns of a multi-turn record, also
    targets (empty for a single turn). Indexing ``e[0]``, ``e[1]`` works as for the plain
    ``(input_ids, prompt_length)`` pairs this used to be.
    """

    input_ids: list[int]
    prompt_length: int
    spans: tuple[tuple[int, int], ...] = ()


class PrefixUnstableTemplate(ValueError):
    """The chat template does not render a conversation as an extension of its prefixes."""


def _render(tokenizer, template: Template, messages: list[dict], *, generation_prompt: bool) -> str:
    """The text of ``messages``; ``generation_prompt`` opens the assistant's next turn."""
    if not messages:
        return ""
    if template.kind == "chat":
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    return template.render(tokenizer, messages)  # the plain template has no generation prompt switch


def assistant_spans(tokenizer, template: Template, messages: list[dict], prompt_ids: list[int]) -> list[tuple[int, int]]:
    """Token ranges ``[start, end)`` of the assistant turns inside ``prompt_ids`` (the tokens of
    ``messages`` rendered with a generation prompt, i.e. the context of the next assistant turn).

    The conversation is rendered prefix by prefix: for assistant turn k the text up to the start
    of its turn (``messages[:k]`` + generation prompt) and up to its end (``messages[:k+1]``).
    Each must be a text prefix of the next and of the whole (the template is *prefix-stable*);
    the character boundaries are then mapped to tokens through the tokenizer's offset mapping
    of the whole text (a token counts when it lies entirely inside the turn, whose trailing
    whitespace, the separator before the next turn, is left out), or, for tokenizers
    without offsets, by checking that each prefix tokenises to a prefix of ``prompt_ids``.
    The response is never located by searching decoded text. Raises
    :class:`PrefixUnstableTemplate` when the template or the tokenisation is not prefix-stable.
    """
    full = _render(tokenizer, template, messages, generation_prompt=True)
    bounds = []
    for k, m in enumerate(messages):
        if m.get("role") != "assistant":
            continue
        a = _render(tokenizer, template, messages[:k], generation_prompt=True)
        b = _render(tokenizer, template, messages[:k + 1], generation_prompt=False)
        if not (b.startswith(a) and full.startswith(b)):
            raise PrefixUnstableTemplate(
                f"assistant turn {k}: the chat template does not render the conversation as an "
                "extension of its prefixes (it rewrites earlier turns)")
        bounds.append((len(a), max(len(a), len(b.rstrip()))))  # trailing whitespace separates turns
    if not bounds:
        return []
    offsets = None
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        if list(enc["input_ids"]) == list(prompt_ids):
            offsets = enc["offset_mapping"]
    spans = []
    for s_char, e_char in bounds:
        if offsets is not None:
            inside = [i for i, (s, e) in enumerate(offsets) if s >= s_char and e <= e_char and e > s]
            if inside:
                spans.append((inside[0], inside[-1] + 1))
            continue
        s_ids = tokenizer(full[:s_char], add_special_tokens=False)["input_ids"] if s_char else []
        e_ids = tokenizer(full[:e_char], add_special_tokens=False)["input_ids"]
        if list(prompt_ids[:len(s_ids)]) != list(s_ids) or list(prompt_ids[:len(e_ids)]) != list(e_ids):
            raise PrefixUnstableTemplate(
                "the tokenizer does not tokenise the conversation as an extension of its prefixes "
                "(tokens merge across a turn boundary) and gives no offset mapping")
        if len(e_ids) > len(s_ids):
            spans.append((len(s_ids), len(e_ids)))
    return spans


def encode_sft_examples(records, tokenizer, template: Template, max_length: int, *,
                        strict: bool = False) -> list[SFTExample]:
    """Encode SFT records; the loss goes on every assistant turn (DESIGN §3.1).

    A single-turn record is ``prompt + response + EOS`` with the response as target, exactly as
    :func:`saferlhf.data.templates.encode_prompt_response` gives it (the encoding RM, CM and RL
    use). A ``messages`` record is encoded the same way around its *last* assistant turn (the
    earlier turns, rendered by the template, form the prompt) and its earlier assistant turns
    are targets too, located by token offsets (:func:`assistant_spans`). When the template is
    not prefix-stable, such a record falls back to its last assistant turn with a warning
    (``strict=True``: the error is raised). Records whose prompt alone does not fit in
    ``max_length`` are left out with a warning that counts them (never silently).
    """
    prompts, responses, multi = [], [], []
    for r in records:
        prompt, response = r.prompt_and_response()
        prompts.append(prompt)
        responses.append(response)
        multi.append(r.messages is not None and isinstance(prompt, list)
                     and any(m.get("role") == "assistant" for m in prompt))
    encoded = encode_prompt_responses(tokenizer, template, prompts, responses, max_length=None)
    out: list[SFTExample] = []
    too_long, unstable, first_error = 0, 0, None
    for r, prompt, (ids, plen), is_multi in zip(records, prompts, encoded, multi):
        if plen >= max_length:
            too_long += 1
            continue
        spans: tuple[tuple[int, int], ...] = ()
        if is_multi:
            try:
                spans = tuple(assistant_spans(tokenizer, template, prompt, ids[:plen]))
            except PrefixUnstableTemplate as e:
                if strict:
                    raise PrefixUnstableTemplate(f"{r.source or 'SFT record'}: {e}") from e
                unstable += 1
                first_error = first_error or f"{r.source or 'SFT record'}: {e}"
        out.append(SFTExample(ids[:max_length], plen, spans))
    if too_long:
        warnings.warn(f"SFT: {too_long} of {len(records)} records left out: their prompt is longer than "
                      f"max_length={max_length} tokens (raise --max-length to keep them)", stacklevel=2)
    if unstable:
        warnings.warn(f"SFT: {unstable} multi-turn records train on their last assistant turn only: "
                      f"{first_error}. Use a prefix-stable chat template to train every turn.", stacklevel=2)
    return out


def collate_sft(examples, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (IGNORE off the targets).

    ``examples``: :class:`SFTExample` or plain ``(input_ids, prompt_length)`` pairs.
    """
    ids, mask = pad_sequences([e[0] for e in examples], pad_id, side="right")
    target = torch.zeros_like(mask, dtype=torch.bool)
    for i, e in enumerate(examples):
        n = len(e[0])
        target[i, e[1]:n] = True  # the (last) response
        for s, t in (e[2] if len(e) > 2 else ()):
            target[i, s:min(t, n)] = True  # earlier assistant turns
    labels = torch.where(target & (mask == 1), ids, torch.full_like(ids, IGNORE))
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def sft_step(model, batch) -> tuple[torch.Tensor, dict[str, float]]:
    """Token cross-entropy on the labelled response tokens, and the next-token accuracy there.
    Every model input of the batch goes to the model (``pixel_values`` … of a VLM batch too)."""
    labels = batch["labels"]
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    loss = sft_loss(logits, labels)
    with torch.no_grad():
        pred = logits[:, :-1].argmax(-1)
        tgt = labels[:, 1:]
        valid = tgt != IGNORE
        acc = ((pred == tgt) & valid).sum() / valid.sum().clamp(min=1)
    return loss, {"token_accuracy": float(acc)}


TINY_VLM_MODELS = {"tiny-llava": "llava", "tiny-llava-siglip": "llava-siglip", "tiny-qwen2_vl": "qwen2_vl"}
"""``--model`` values that build a tiny VLM of a style from ``--tokenizer``."""


def _load_model_and_tokenizer(cfg: SFTConfig):
    if cfg.model in TINY_VLM_MODELS:
        if cfg.tokenizer is None:
            raise ConfigError(f"--model {cfg.model} needs --tokenizer DIR (the tiny VLM is sized to its vocabulary)")
        heads = max(1, cfg.tiny_hidden // 32)
        model, tokenizer = tiny_vlm(TINY_VLM_MODELS[cfg.model], load_tokenizer(cfg.tokenizer),
                                    hidden_size=cfg.tiny_hidden, num_layers=cfg.tiny_layers, num_heads=heads,
                                    max_position_embeddings=max(cfg.max_length, 64), seed=cfg.seed)
        template = tokenizer.template
    elif cfg.model == "tiny":
        if cfg.tokenizer is None:
            raise ConfigError("--model tiny needs --tokenizer DIR (the tiny model is sized to its vocabulary)")
        tokenizer = load_tokenizer(cfg.tokenizer)
        model = tiny_llama(tokenizer, hidden_size=cfg.tiny_hidden, num_layers=cfg.tiny_layers,
                           num_heads=max(1, cfg.tiny_hidden // 32),
                           max_position_embeddings=max(cfg.max_length, 64), seed=cfg.seed)
        template = template_for(tokenizer)
    else:
        if not Path(cfg.model).is_dir():
            raise FileNotFoundError(f"--model {cfg.model}: not a folder (give 'tiny' or a save_pretrained dir)")
        tokenizer = load_processor(cfg.tokenizer or cfg.model)
        model = load_causal_lm(cfg.model, dtype="fp32" if cfg.precision != "bf16" else "bf16",
                               gradient_checkpointing=cfg.gradient_checkpointing)
        template = load_template(cfg.model, tokenizer)
    if cfg.freeze and not isinstance(tokenizer, VLMProcessor):
        raise ConfigError(f"--freeze {cfg.freeze}: parts of a vision-language model, but --model {cfg.model} "
                          "is a text model")
    spec = lora_spec(cfg)
    if spec is not None:
        model = apply_lora(model, spec)
    if cfg.freeze:  # after LoRA: adapters inside a frozen part stay frozen too
        freeze_vlm_parts(model, cfg.freeze)
    return model, tokenizer, template


def run_sft(cfg: SFTConfig) -> Path:
    """Train and save the SFT policy in ``cfg.out``; returns the folder."""
    from saferlhf.data import load_sft
    from saferlhf.hub import hub_data_options

    seed_everything(cfg.seed)
    accelerator = make_accelerator(cfg.precision, grad_accum=cfg.grad_accum)
    model, tokenizer, template = _load_model_and_tokenizer(cfg)
    records = load_sft(cfg.data, format=cfg.data_format, on_bad_record=cfg.on_bad_record,
                       **hub_data_options(cfg)).records
    if not records:
        raise ConfigError(f"--data {cfg.data}: no usable SFT records")
    eval_records = None
    if cfg.eval_data:
        eval_records = load_sft(cfg.eval_data, format=cfg.data_format, on_bad_record=cfg.on_bad_record,
                                **hub_data_options(cfg, "eval_data")).records
    meta: dict[str, Any] = {"stage": "sft"}
    if isinstance(tokenizer, VLMProcessor):  # batches collated with their images
        from saferlhf.data.multimodal import collate_vlm_sft

        cache: dict = {}
        train, evals = records, eval_records

        def to_batch(items):
            return collate_vlm_sft(items, tokenizer, max_length=cfg.max_length, image_cache=cache)

        meta.update(modality="image-text", freeze=list(cfg.freeze))
    else:
        warn_images_ignored(records, cfg.model, "SFT")
        train = encode_sft_examples(records, tokenizer, template, cfg.max_length)
        evals = (encode_sft_examples(eval_records, tokenizer, template, cfg.max_length)
                 if eval_records is not None else None)

        def to_batch(items):
            return collate_sft(items, tokenizer.pad_token_id)

    def batch_of(items):
        return {k: v.to(accelerator.device) for k, v in to_batch(items).items()}

    def collate(indices):
        return batch_of([train[i] for i in indices])

    def evaluate(m) -> dict[str, float]:
        m.eval()
        tot, n = {"loss": 0.0, "token_accuracy": 0.0}, 0
        with torch.inference_mode():
            for i in range(0, len(evals), cfg.batch_size):
                batch = batch_of(evals[i:i + cfg.batch_size])
                loss, met = sft_step(m, batch)
                k = len(batch["input_ids"])
                tot["loss"] += float(loss) * k
                tot["token_accuracy"] += met["token_accuracy"] * k
                n += k
        return {k: v / max(n, 1) for k, v in tot.items()}

    result = run_supervised_loop(cfg, accelerator, model, n_examples=len(train), collate=collate,
                                 loss_fn=sft_step, evaluate=evaluate if evals else None, name="sft")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_policy(accelerator.unwrap_model(model), tokenizer, cfg.out, template=template,
                    meta={**meta, "steps": result.steps, "final_metrics": result.final_metrics,
                          "eval_metrics": result.eval_metrics})
    return Path(cfg.out)


def warn_images_ignored(records, model: str, stage: str) -> None:
    """A text model trained on records that carry images reads their text only: say so."""
    n = sum(1 for r in records if getattr(r, "images", None))
    if n:
        warnings.warn(f"{stage}: {n} of {len(records)} records carry images but --model {model} is a text "
                      "model: the images are ignored (use a VLM to train on them)", stacklevel=3)


