"""``saferlhf guard moderate --model DIR --input in.jsonl --out out.jsonl``.

Input: JSON Lines, one object per line with ``prompt`` (a string or a list of chat messages)
and optionally ``response`` (output moderation) and ``image`` / ``images`` (a path or a list
of paths; a relative path is resolved against the input file's folder, as the data loaders
do; only an image + text guard takes them); every other field is ignored. Output: one JSON line per input line, in the same order:
``{"safe", "severity", "categories", "score"}`` (with ``--keep-fields`` the input's fields
too). Every line is checked before anything is scored: a line that is not a JSON object, has
no usable prompt or a non-string response stops the run with an error naming the file and
line, and no output is written; so does an image that does not exist or cannot be decoded
(checked with the model loaded, before anything is scored). The output is written to a temporary file and renamed.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from saferlhf.guard.config import GuardModerateConfig


class ModerationInputError(ValueError):
    """A line of the moderation input cannot be used; the message names the file and line."""


def read_moderation_input(path: str | Path) -> list[dict[str, Any]]:
    """Parse and check every line: ``[{"prompt", "response", "images", "row"}]`` in file order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--input {path}: no such file")
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            if not line.strip():
                raise ModerationInputError(f"{where}: empty line (one JSON object per line is expected, "
                                           "and every input line gets one verdict line)")
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ModerationInputError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise ModerationInputError(f"{where}: expected a JSON object, got {type(row).__name__}")
            prompt = row.get("prompt")
            if isinstance(prompt, list):
                ok = all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in prompt) and prompt
            else:
                ok = isinstance(prompt, str) and prompt.strip() != ""
            if not ok:
                raise ModerationInputError(
                    f"{where}: 'prompt' must be a non-empty string or a list of chat messages "
                    f"{{'role', 'content'}}, got {prompt!r:.80}")
            response = row.get("response")
            if response is not None and not isinstance(response, str):
                raise ModerationInputError(f"{where}: 'response' must be a string or absent, got {response!r:.80}")
            images = row.get("images", row.get("image"))
            if images is not None and not isinstance(images, list):
                images = [images]
            images = [_resolve_image(im, path.parent, where) for im in images or [] if im is not None]
            rows.append({"prompt": prompt, "response": response, "images": images or None, "row": row,
                         "where": where})
    return rows


def _resolve_image(ref: Any, root: Path, where: str) -> Any:
    """A path string (relative to the input file's folder) or ``{"path"}`` / ``{"bytes"}``."""
    if isinstance(ref, dict) and (ref.get("path") or ref.get("bytes")):
        if ref.get("path") and not ref.get("bytes"):
            return _resolve_image(ref["path"], root, where)
        return ref
    if not isinstance(ref, str) or not ref.strip():
        raise ModerationInputError(f"{where}: an image must be a path (string), got {ref!r:.80}")
    p = Path(ref).expanduser()
    return str(p if p.is_absolute() else root / p)


def moderate_file(guard, input_path: str | Path, out_path: str | Path, *, keep_fields: bool = False) -> int:
    """Moderate every line of ``input_path`` into ``out_path``; returns the number of lines."""
    return write_verdicts(guard, read_moderation_input(input_path), out_path, keep_fields=keep_fields)


def write_verdicts(guard, rows: list[dict[str, Any]], out_path: str | Path, *, keep_fields: bool = False) -> int:
    from saferlhf.data.multimodal import ImageLoadError, load_image

    images = []
    for r in rows:
        if r["images"]:
            try:
                guard._check_images(r["images"])
            except NotImplementedError as e:
                raise ModerationInputError(f"{r['where']}: has an image, but {e}") from None
            try:  # check that every image opens before anything is scored (errors name the line)
                for im in r["images"]:
                    load_image(im, source=r["where"])
            except ImageLoadError as e:
                raise ModerationInputError(str(e)) from None
            images.append(r["images"])
        else:
            images.append(None)
    from saferlhf.guard.model import GuardInputError

    try:
        verdicts = (guard.moderate_batch([r["prompt"] for r in rows], [r["response"] for r in rows],
                                         images if any(images) else None,
                                         sources=[r["where"] for r in rows]) if rows else [])
    except (GuardInputError, ImageLoadError) as e:  # the message names FILE:LINE
        raise ModerationInputError(str(e)) from None
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for r, v in zip(rows, verdicts, strict=True):
                f.write(json.dumps({**r["row"], **v} if keep_fields else v, ensure_ascii=False) + "\n")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return len(rows)


def run_guard_moderate(cfg: GuardModerateConfig) -> int:
    """CLI runner; exit code 2 with a message naming the line for bad input."""
    from saferlhf.guard.model import Guard

    try:
        rows = read_moderation_input(cfg.input)  # fail before loading the model
        guard = Guard.load(cfg.model, batch_size=cfg.batch_size, threshold=cfg.threshold)
        n = write_verdicts(guard, rows, cfg.out, keep_fields=cfg.keep_fields)
    except ModerationInputError as e:
        print(f"saferlhf guard moderate: {e}", file=sys.stderr)
        return 2
    print(f"moderated {n} line(s) of {cfg.input} -> {cfg.out}")
    return 0
