"""Tokenizers built locally from a vocabulary or a corpus (no hub access).

Used by the verifiable world (which saves the exact word-level tokenizer of its vocabulary),
the tiny models of :mod:`saferlhf.models.tiny` / :mod:`saferlhf.models.tiny_vlm` and the tests:
a word-level tokenizer from a word list, a byte-level BPE trained on given text, and the image
tokens and multimodal chat templates of the two tiny VLM styles (``llava``, ``qwen2_vl``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
SPECIAL_TOKENS = [PAD, UNK, BOS, EOS]

# A minimal chat template for locally-built tokenizers. It renders the last user turn as
# ``USER: {content} ASSISTANT:`` (a short form of the classic Beaver template) and, for
# assistant turns, `` {content}</s>``; tokenizers built here treat "USER:" and
# "ASSISTANT:" as single words.
SIMPLE_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {{ message['content'] }} ASSISTANT:"
    "{% elif message['role'] == 'assistant' %} {{ message['content'] }}" + EOS + " "
    "{% elif message['role'] == 'system' %}{{ message['content'] }} "
    "{% endif %}{% endfor %}"
)


def _wrap(tok: Tokenizer, chat_template: str | None) -> PreTrainedTokenizerFast:
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        padding_side="right",
    )
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast


def build_word_level_tokenizer(
    words: Iterable[str], *, chat_template: str | None = SIMPLE_CHAT_TEMPLATE
) -> PreTrainedTokenizerFast:
    """An exact word-level tokenizer: one id per whitespace-separated word.

    Ids 0..3 are ``<pad> <unk> <s> </s>``; the given words follow in first-seen order
    (duplicates removed), so the same word list always gives the same ids.
    """
    vocab: dict[str, int] = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for w in ["USER:", "ASSISTANT:", *words]:
        if not w or any(c.isspace() for c in w):
            raise ValueError(f"word-level vocabulary entry {w!r} is empty or contains whitespace")
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # No decoder: tokenizers joins word-level tokens with single spaces, which is exact here.
    return _wrap(tok, chat_template)


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int = 512, *, chat_template: str | None = SIMPLE_CHAT_TEMPLATE
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` (seconds for a few MB)."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return _wrap(tok, chat_template)


# ----------------------------------------------------------------------------- VLM tokens
STYLES = ("llava", "qwen2_vl")

LLAVA_IMAGE_TOKEN = "<image>"
QWEN_VISION_START = "<|vision_start|>"
QWEN_IMAGE_PAD = "<|image_pad|>"
QWEN_VISION_END = "<|vision_end|>"
QWEN_VIDEO_PAD = "<|video_pad|>"  # never used; gives the config's video_token_id its own id
IMAGE_SPECIAL_TOKENS = (LLAVA_IMAGE_TOKEN, QWEN_VISION_START, QWEN_IMAGE_PAD, QWEN_VISION_END, QWEN_VIDEO_PAD)
"""Every image token of both styles: one tokenizer serves either model."""

# Text put in the prompt for one image, per style.
IMAGE_PLACEHOLDER = {"llava": LLAVA_IMAGE_TOKEN, "qwen2_vl": QWEN_VISION_START + QWEN_IMAGE_PAD + QWEN_VISION_END}


def vlm_chat_template(style: str) -> str:
    """A chat template like :data:`SIMPLE_CHAT_TEMPLATE` that also renders
    HF multimodal content lists: ``{"type": "image"}`` becomes the style's image placeholder
    (``<image>`` / ``<|vision_start|><|image_pad|><|vision_end|>``) followed by a space,
    ``{"type": "text", "text": ...}`` its text. String contents render as before."""
    check_style(style)
    placeholder = IMAGE_PLACEHOLDER[style]
    return (
        "{%- macro render(c) -%}{%- if c is string -%}{{ c }}{%- else -%}{%- for item in c -%}"
        "{%- if item['type'] == 'image' -%}{{ '" + placeholder + " ' }}"
        "{%- elif item['type'] == 'text' -%}{{ item['text'] }}{%- endif -%}{%- endfor -%}{%- endif -%}"
        "{%- endmacro -%}"
        "{% for message in messages %}"
        "{% if message['role'] == 'user' %}USER: {{ render(message['content']) }} ASSISTANT:"
        "{% elif message['role'] == 'assistant' %} {{ render(message['content']) }}" + EOS + " "
        "{% elif message['role'] == 'system' %}{{ render(message['content']) }} "
        "{% endif %}{% endfor %}"
    )


def check_style(style: str) -> None:
    if style not in STYLES:
        raise ValueError(f"unknown VLM style {style!r}; choose one of {STYLES}")


def vlm_tokenizer(
    tokenizer_or_words: PreTrainedTokenizerFast | Sequence[str],
    style: str | None = None,
) -> PreTrainedTokenizerFast:
    """A tokenizer with the image tokens of both styles (:data:`IMAGE_SPECIAL_TOKENS`) added as
    special tokens (idempotent; the tokenizer is changed in place and returned).

    ``tokenizer_or_words``: a tokenizer, or a word list for
    :func:`build_word_level_tokenizer`. ``style``: also set the style's
    multimodal chat template (:func:`vlm_chat_template`); ``None`` leaves the template alone.
    """
    if isinstance(tokenizer_or_words, (list, tuple)):
        tok = build_word_level_tokenizer(tokenizer_or_words)
    else:
        tok = tokenizer_or_words
    vocab = tok.get_vocab()
    missing = [t for t in IMAGE_SPECIAL_TOKENS if t not in vocab]
    if missing:
        extra = list(getattr(tok, "extra_special_tokens", None) or [])
        tok.add_special_tokens({"extra_special_tokens": extra + [t for t in missing if t not in extra]})
    if style is not None:
        tok.chat_template = vlm_chat_template(style)
    return tok
