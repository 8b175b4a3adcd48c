"""What makes ``--resume`` safe: the config check, checkpoint verification and fallback, and the
optimiser state in safetensors.

* :func:`check_resume_config`: the new config against the saved ``run_config.json``. Keys that
  define the run (model, data, seed, batch sizes, algorithm, optimiser, ...) cannot change on
  resume: a change is a :class:`~saferlhf.config.ConfigError` naming each key with its saved
  and new value. The keys in :data:`MUTABLE_ON_RESUME` (the budget and the logging) may
  change: they are applied, and the run config written afterwards records them.
* :func:`verify_checkpoint`: a checkpoint's files read before ``load_state`` touches the
  model (trainer state JSON, safetensors headers and sizes, optimiser tensors).
* :func:`save_optimizer_safetensors` / :func:`optimizer_load_dir`: accelerate writes the
  optimiser state with ``torch.save`` whatever ``safe_serialization`` says; we store it as
  ``optimizer.safetensors`` (tensors) + ``optimizer.json`` (the rest of the state dict) and
  rebuild accelerate's file in a private temporary folder when loading.
* :func:`check_random_states`: a ``random_states_*.pkl`` that the safe unpickler refuses
  (tampered, or corrupt) is a warning the user sees: the resumed run continues without it,
  so its sampling will differ from an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from saferlhf.config.resume import (  # noqa: F401 - the run-config check, re-exported
    MUTABLE_ON_RESUME,
    RUN_CONFIG,
    check_resume_config,
    config_changes,
    flatten,
)
from saferlhf.errors import CheckpointError

_OPT = re.compile(r"^optimizer(_\d+)?\.bin$")


# ----------------------------------------------------------------------------- optimiser state


def _split(obj: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    """A JSON skeleton of ``obj`` with its tensors moved to ``tensors`` (keys are paths)."""
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().contiguous()
        return {"__tensor__": path}
    if isinstance(obj, dict):
        return {"__dict__": [[_split(k, tensors, f"{path}.k{i}"), _split(v, tensors, f"{path}.{i}")]
                             for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_split(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_split(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"optimizer state holds a {type(obj).__name__}, which safetensors + JSON cannot store")


def _join(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {_join(k, tensors): _join(v, tensors) for k, v in obj["__dict__"]}
        if "__tuple__" in obj:
            return tuple(_join(v, tensors) for v in obj["__tuple__"])
    if isinstance(obj, list):
        return [_join(v, tensors) for v in obj]
    return obj


def save_optimizer_safetensors(folder: str | os.PathLike) -> list[str]:
    """Replace accelerate's pickled ``optimizer*.bin`` in ``folder`` by safetensors + JSON.

    Files that hold anything besides tensors and plain values are left as they are.
    """
    from accelerate.utils import load as safe_load
    from safetensors.torch import save_file

    done = []
    for p in sorted(Path(folder).iterdir()):
        if not (p.is_file() and _OPT.match(p.name)):
            continue
        state = safe_load(p, map_location="cpu")
        tensors: dict[str, torch.Tensor] = {}
        try:
            skeleton = _split(state, tensors, "s")
        except TypeError:
            continue
        stem = p.name[:-4]
        save_file(tensors, str(p.with_name(stem + ".safetensors")))
        p.with_name(stem + ".json").write_text(json.dumps(skeleton))
        p.unlink()
        done.append(stem)
    return done


def load_optimizer_safetensors(folder: Path, stem: str) -> dict[str, Any]:
    from safetensors.torch import load_file

    tensors = load_file(str(folder / f"{stem}.safetensors"))
    return _join(json.loads((folder / f"{stem}.json").read_text()), tensors)


@contextmanager
def optimizer_load_dir(ckpt: Path):
    """``ckpt`` as accelerate's ``load_state`` reads it: when the optimiser state is stored in
    safetensors, a private temporary folder linking the checkpoint's files plus the rebuilt
    ``optimizer*.bin`` (the checkpoint itself is never modified)."""
    stems = [p.name[:-12] for p in ckpt.glob("optimizer*.safetensors")
             if (ckpt / (p.name[:-12] + ".json")).is_file()]
    if not stems:
        yield ckpt
        return
    tmp = Path(tempfile.mkdtemp(prefix="saferlhf-ckpt-"))
    try:
        for p in ckpt.iterdir():
            (tmp / p.name).symlink_to(p.resolve())
        for stem in stems:
            torch.save(load_optimizer_safetensors(ckpt, stem), tmp / f"{stem}.bin")
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------- verification


def verify_checkpoint(ckpt: Path) -> None:
    """Read what ``load_state`` will need; raise CheckpointError naming the broken file."""
    from saferlhf.errors import PreflightError
    from saferlhf.preflight import safetensors_numel

    state = ckpt / "trainer_state.json"
    try:
        d = json.loads(state.read_text())
        int(d["step"]), int(d["micro_step"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{state}: unreadable ({type(e).__name__})") from None
    for p in sorted(ckpt.glob("*.safetensors")):
        try:
            safetensors_numel(p)
        except PreflightError as e:
            raise CheckpointError(str(e)) from None
    if not any(ckpt.glob("model*.safetensors")) and not any(ckpt.glob("pytorch_model*.bin")) \
            and not any(p.is_dir() for p in ckpt.iterdir()):
        raise CheckpointError(f"{ckpt}: no model weights")


def check_random_states(ckpt: Path) -> list[str]:
    """Warn (visibly) about ``random_states_*.pkl`` files the safe unpickler refuses."""
    from accelerate.utils import load as safe_load

    bad = []
    for p in sorted(ckpt.glob("random_states_*.pkl")):
        try:
            states = safe_load(p)
            if not isinstance(states, dict) or "torch_manual_seed" not in states:
                raise ValueError("not an RNG state")
        except Exception as e:  # noqa: BLE001 - whatever the unpickler refuses is reported
            bad.append(p.name)
            msg = (f"{p}: the RNG state cannot be read safely ({type(e).__name__}: "
                   f"{str(e).splitlines()[0][:160] if str(e) else ''}); it may have been tampered with or be "
                   "corrupt. Resuming without it: random draws after the resume (sampling, dropout) will differ from "
                   "an uninterrupted run. Check where this checkpoint came from.")
            warnings.warn(msg, stacklevel=2)
            print(f"saferlhf: warning: {msg}", file=sys.stderr)
    return bad
