"""Policy checkpoints: ``save_pretrained`` folders plus the saferlhf metadata that goes with them.

Next to the model and tokenizer files a checkpoint holds ``saferlhf.json``: the prompt
template the model was trained with (so evaluation and RL use exactly the same), what kind of
checkpoint it is, and free-form provenance. The weights are written to a temporary folder and
renamed into place, with a ``COMPLETE`` marker written last.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from torch import nn

from saferlhf.data.templates import Template
from saferlhf.processing import META_FILE, saved_template


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path) / META_FILE
    return json.loads(p.read_text()) if p.is_file() else {}


def load_template(path: str | os.PathLike, tokenizer) -> Template:
    """The template saved with a checkpoint, else the tokenizer's default (chat or fallback)."""
    return saved_template(path, tokenizer)


def save_policy(model: nn.Module, tokenizer, out: str | os.PathLike, *, template: Template,
                merge_lora: bool = True, meta: dict[str, Any] | None = None,
                state_dict: dict[str, Any] | None = None) -> Path:
    """Save a (possibly LoRA) causal LM as a self-contained ``save_pretrained`` folder.

    With ``merge_lora`` a peft model is merged into a copy of its base first, so the folder
    loads with ``AutoModelForCausalLM.from_pretrained`` alone; otherwise the adapter is saved.
    ``state_dict``: the full weights gathered from a sharded model (FSDP / ZeRO-3,
    :func:`saferlhf.distributed.full_state_dict_if_sharded`), written instead of the local
    (sharded) parameters. Writes into ``out`` (which may already hold logs) atomically:
    temporary folder, then move.
    """
    from saferlhf.io import atomic_files
    from saferlhf.models.loading import is_peft_model, unwrap_model

    model = unwrap_model(model)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_files(out) as tmp:
        if state_dict is not None and is_peft_model(model):
            from saferlhf.models.loading import peft_merged_weights

            if merge_lora:  # merged from the gathered values: the live layers hold only shards
                model.get_base_model().save_pretrained(tmp, safe_serialization=True,
                                                       state_dict=peft_merged_weights(model, state_dict))
            else:  # the adapter alone, as for an unsharded LoRA policy
                model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        elif state_dict is not None:
            model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        elif is_peft_model(model) and merge_lora:
            import copy

            merged = copy.deepcopy(model).merge_and_unload()
            merged.save_pretrained(tmp, safe_serialization=True)
            del merged
        else:
            model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        info = {"kind": "policy", "template": template.to_dict(), **(meta or {})}
        (tmp / META_FILE).write_text(json.dumps(info, indent=2, sort_keys=True))
    return out


def copy_tokenizer(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy the tokenizer files of ``src`` into ``dst`` (for checkpoints that only need them)."""
    for name in os.listdir(src):
        if name.startswith(("tokenizer", "special_tokens", "chat_template", "vocab", "merges")):
            shutil.copy2(Path(src) / name, Path(dst) / name)
