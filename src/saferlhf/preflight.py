"""Checks before work starts: seconds, not after training.

``check_stage(cfg, stage)`` looks at a stage config's paths: every model folder (or hub id)
resolves and holds a parseable ``config.json`` and readable weights (safetensors headers
parsed, file sizes checked against them), the tokenizer fits the model (vocabulary size
against the embedding rows, special token ids in range, the same vocabulary as the tokenizer
saved beside the model), and the output directory is a directory that can be written with
free space for one checkpoint (estimated from the parameter count). Each failure is a
:class:`~saferlhf.errors.PreflightError` naming the key, the path and the fix. Numbers are
range-checked earlier, by the config layer (``option(..., ge=0)``).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path
from typing import Any

from saferlhf.errors import PreflightError

# Keys of stage configs that name a model folder, and the ones that are guard folders
# (a guard folder holds its own head files; only its weights are checked).
MODEL_KEYS = ("model", "policy", "reward_model", "cost_model")
GUARD_KEYS = ("guard",)
BUILT_IN_MODELS = {"tiny", "minilm", "tiny-llava", "tiny-llava-siglip", "tiny-qwen2_vl"}
GUARD_STAGES = {"guard moderate", "eval guard"}  # their --model is a guard folder
FILE_OUTPUT_STAGES = frozenset({"guard moderate", "generate"})  # --out is a file (written atomically)
PLANNING_STAGES = {"plan"}  # estimate a recipe's memory: its model paths need not exist here
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_MAX_HEADER = 100 * 1024 * 1024
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}

_checked: set[str] = set()


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


# ----------------------------------------------------------------------------- weights


def safetensors_numel(path: str | os.PathLike) -> int:
    """Parameters stored in one ``.safetensors`` file; its header and size are checked on the way.

    Raises PreflightError when the file is truncated, is not a safetensors file, or its header
    does not describe its contents.
    """
    path = Path(path)
    size = path.stat().st_size
    fix = "the file is damaged (an interrupted copy or download?): copy the model again"
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise PreflightError(f"{path}: {size} bytes, too short for a safetensors file; {fix}")
        (n,) = struct.unpack("<Q", head)
        if n > min(_MAX_HEADER, size - 8):
            raise PreflightError(f"{path}: not a safetensors file (header length {n} for a {size}-byte file); {fix}")
        try:
            header = json.loads(fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise PreflightError(f"{path}: the safetensors header is not valid JSON; {fix}") from None
    if not isinstance(header, dict):
        raise PreflightError(f"{path}: the safetensors header is not a mapping; {fix}")
    end, numel = 0, 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, stop = info["data_offsets"]
            count = 1
            for d in info["shape"]:
                count *= int(d)
            width = _DTYPE_BYTES.get(info["dtype"], 0)
        except (KeyError, TypeError, ValueError):
            raise PreflightError(f"{path}: tensor {name!r} has a malformed header entry; {fix}") from None
        if width and stop - start != count * width:
            raise PreflightError(f"{path}: tensor {name!r} does not match its header; {fix}")
        end = max(end, stop)
        numel += count
    if 8 + n + end > size:
        raise PreflightError(f"{path}: truncated ({size} bytes, its header describes {8 + n + end}); {fix}")
    return numel


def check_weights(folder: str | os.PathLike, key: str) -> int:
    """Every weights file in ``folder`` (and one level below) readable; the parameter count.

    ``.bin``/``.pt`` files are only checked to be non-empty (reading them means unpickling).
    """
    folder = Path(folder)
    files = [p for p in sorted(folder.glob("*")) + sorted(folder.glob("*/*"))
             if p.is_file() and p.suffix in WEIGHT_SUFFIXES and not p.name.startswith(("optimizer", "scheduler"))]
    if not files:
        raise PreflightError(f"{_flag(key)} {folder}: no weights file (*.safetensors / *.bin) in the folder; "
                             "give a save_pretrained folder")
    numel = 0
    for p in files:
        if p.suffix == ".safetensors":
            try:
                numel += safetensors_numel(p)
            except PreflightError as e:
                raise PreflightError(f"{_flag(key)} {folder}: {e}") from None
        elif p.stat().st_size == 0:
            raise PreflightError(f"{_flag(key)}: {p} is empty; copy the model again")
        else:
            numel += p.stat().st_size // 4  # a rough count: fp32 pickles
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (json.JSONDecodeError, KeyError, TypeError):
            raise PreflightError(f"{_flag(key)}: {index} is not a valid shard index") from None
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            raise PreflightError(f"{_flag(key)} {folder}: shard(s) {missing} listed in {index.name} are missing")
    return numel


def read_model_config(folder: str | os.PathLike, key: str) -> dict[str, Any]:
    """``config.json`` of a model folder, parsed ({} for a peft adapter folder)."""
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        if (folder / "adapter_config.json").is_file():
            return {}
        raise PreflightError(
            f"{_flag(key)} {folder}: no config.json, so this is not a model folder; give a folder written by "
            "save_pretrained (an SFT / reward / cost model output dir, or a downloaded model)")
    try:
        data = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PreflightError(f"{_flag(key)}: {cfg_path} is not valid JSON ({e}); restore the file") from None
    if not isinstance(data, dict):
        raise PreflightError(f"{_flag(key)}: {cfg_path} does not hold a JSON object")
    model_type = data.get("model_type")
    if not model_type:
        raise PreflightError(f"{_flag(key)}: {cfg_path} has no 'model_type', so transformers cannot tell which "
                             "model it describes; restore the model's own config.json")
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if model_type not in CONFIG_MAPPING_NAMES and "auto_map" not in data:
        raise PreflightError(
            f"{_flag(key)}: {cfg_path} names model_type {model_type!r}, which this transformers version does not "
            "know; upgrade transformers or give another model")
    return data


def resolve_model(value: str, key: str) -> Path:
    """A local model folder for ``value`` (a folder, or a hub id in the local cache)."""
    path = Path(value)
    if path.is_dir():
        return path
    if path.exists():
        raise PreflightError(f"{_flag(key)} {value} is a file; give the model's folder (save_pretrained output)")
    looks_local = value.startswith((".", "/", "~")) or value.count("/") != 1
    if not looks_local and value.count("/") == 1:
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(value, local_files_only=True))
        except Exception:  # noqa: BLE001 - whatever the hub client raises: not available here
            raise PreflightError(
                f"{_flag(key)} {value}: not a local folder, and no hub model of that id is in the local "
                "Hugging Face cache (this machine runs offline). Download it first (huggingface-cli download "
                f"{value}) or give a save_pretrained folder") from None
    raise PreflightError(f"{_flag(key)} {value}: no such folder; give a save_pretrained folder"
                         + (f" or one of {sorted(BUILT_IN_MODELS)}" if key == "model" else ""))


def vocab_rows(config: dict[str, Any]) -> int | None:
    for c in (config, config.get("text_config") or {}):
        if isinstance(c, dict) and isinstance(c.get("vocab_size"), int):
            return c["vocab_size"]
    return None


# ----------------------------------------------------------------------------- tokenizer


def _load_tokenizer(path: str, key: str):
    from saferlhf.models.loading import load_tokenizer

    try:
        tok = load_tokenizer(path)
    except Exception as e:  # noqa: BLE001 - any failure here is a tokenizer the user pointed to
        raise PreflightError(f"{_flag(key)} {path}: cannot load a tokenizer ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}); give a folder with the tokenizer "
                             "files (tokenizer.json / tokenizer_config.json)") from None
    return getattr(tok, "tokenizer", tok)


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json", "vocab.json"))


def check_tokenizer(tokenizer_dir: str, model_dir: Path | None, config: dict[str, Any] | None, key: str) -> None:
    """The tokenizer fits the model: ids inside the embedding, the model's own vocabulary."""
    tok = _load_tokenizer(tokenizer_dir, key)
    if model_dir is None or config is None:
        return
    rows = vocab_rows(config)
    if rows is not None:
        n = len(tok)
        if n > rows:
            raise PreflightError(
                f"{_flag(key)} {tokenizer_dir} has {n} tokens but the model {model_dir} has {rows} embedding rows: "
                "token ids past the embedding would crash the first forward pass. Use the tokenizer the model "
                "was trained with (leave --tokenizer unset to use the model's own)")
        for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
            tid = getattr(tok, name, None)
            if isinstance(tid, int) and not 0 <= tid < rows:
                raise PreflightError(
                    f"{_flag(key)} {tokenizer_dir}: its {name[:-3]} id {tid} is outside the model's "
                    f"{rows} embedding rows ({model_dir}); use the model's own tokenizer")
    if Path(tokenizer_dir).resolve() != model_dir.resolve() and _has_tokenizer(model_dir):
        own = _load_tokenizer(str(model_dir), key)
        a, b = tok.get_vocab(), own.get_vocab()
        if a != b:
            differ = sum(1 for t, i in a.items() if b.get(t) != i) + sum(1 for t in b if t not in a)
            raise PreflightError(
                f"{_flag(key)} {tokenizer_dir} is not the tokenizer saved with the model {model_dir}: "
                f"{differ} tokens differ (sizes {len(a)} vs {len(b)}), so the model would read other words "
                "than it was trained on. Leave --tokenizer unset to use the model's own")


# ----------------------------------------------------------------------------- output dir


def check_output_dir(out: str | os.PathLike, *, key: str = "out", need_bytes: int = 0) -> None:
    """``out`` is (or can be made) a writable directory with ``need_bytes`` free."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PreflightError(f"{_flag(key)} {out} is a file; give a directory (new or empty) for the outputs")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise PreflightError(f"{_flag(key)} {out}: {probe} is a file, so the directory cannot be created")
    try:
        out.mkdir(parents=True, exist_ok=True)
        test = out / f".saferlhf-write-test-{os.getpid()}"
        test.write_bytes(b"")
        test.unlink()
    except OSError as e:
        raise PreflightError(f"{_flag(key)} {out} is not writable ({e.strerror or e}); choose a directory you "
                             "can write to") from None
    if need_bytes:
        free = shutil.disk_usage(out).free
        if free < need_bytes:
            raise PreflightError(
                f"{_flag(key)} {out}: {free / 2**20:.0f} MiB free, but one checkpoint of this run needs about "
                f"{need_bytes / 2**20:.0f} MiB (weights, optimiser state and the final model); free disk space "
                "or choose another --out")


def checkpoint_bytes(numel: int, *, trainable: bool = True) -> int:
    """Bytes one checkpoint and the final export need: fp32 weights, AdamW's two moments, export."""
    per = 4 * (1 + (2 if trainable else 0) + 1)
    return int(numel * per * 1.1) + 16 * 2**20


def tiny_numel(cfg: Any) -> int:
    """Parameters of the tiny model built from a tokenizer (``--model tiny``), roughly."""
    h, layers = getattr(cfg, "tiny_hidden", 128), getattr(cfg, "tiny_layers", 2)
    vocab = 0
    if getattr(cfg, "tokenizer", None):
        try:
            vocab = len(_load_tokenizer(cfg.tokenizer, "tokenizer"))
        except PreflightError:
            vocab = 0
    return 2 * vocab * h + layers * 12 * h * h


# ----------------------------------------------------------------------------- the stage


def check_stage(cfg: Any, stage: str) -> None:
    """Every check that applies to ``cfg`` (once per config value in a process)."""
    from dataclasses import asdict, is_dataclass

    if stage in PLANNING_STAGES:  # reads a recipe, loads nothing
        return
    memo = f"{stage}:{json.dumps(asdict(cfg), sort_keys=True, default=str)}" if is_dataclass(cfg) else None
    if memo is not None and memo in _checked:
        return
    numel = 0
    first_model: tuple[Path, dict[str, Any]] | None = None
    keys = ("model",) if stage in GUARD_STAGES else ()
    for key in MODEL_KEYS + GUARD_KEYS:
        value = getattr(cfg, key, None)
        if not isinstance(value, str) or value in BUILT_IN_MODELS:
            continue
        folder = resolve_model(value, key)
        if key in GUARD_KEYS or key in keys:
            check_weights(folder, key)
            continue
        config = read_model_config(folder, key)
        numel += check_weights(folder, key)
        if first_model is None and key in ("model", "policy"):
            first_model = (folder, config)
    tokenizer = getattr(cfg, "tokenizer", None)
    if isinstance(tokenizer, str):
        model, config = first_model if first_model else (None, None)
        check_tokenizer(tokenizer, model, config, "tokenizer")
    if getattr(cfg, "model", None) in BUILT_IN_MODELS and hasattr(cfg, "tiny_hidden"):
        numel += tiny_numel(cfg)
    out = getattr(cfg, "out", None)
    if isinstance(out, str) and stage not in FILE_OUTPUT_STAGES:
        training = hasattr(cfg, "resume")
        check_output_dir(out, need_bytes=checkpoint_bytes(numel, trainable=training) if numel else 0)
    if memo is not None:
        _checked.add(memo)
