"""The CLI's error boundary: which failures are the user's (exit 2, one message) and which are bugs.

A user-caused failure (bad config, bad data, a model folder that is not a model, a full
disk, a path that cannot be written, a corrupt weights file, an unknown hub id, an output
directory another run holds) ends the run with exit code 2 and one message that names the
file / key / record and the fix; the traceback is shown only with ``--debug`` (or
``SAFERLHF_DEBUG=1``). Anything else is a bug in saferlhf: exit code 1, the traceback, and a
line asking for a report.
"""

from __future__ import annotations

import errno
import os
import sys
import traceback

from saferlhf.errors import UserError

EXIT_USER = 2
EXIT_BUG = 1
DEBUG_ENV = "SAFERLHF_DEBUG"
BUG_REPORT = ("this looks like a bug in saferlhf: please report it with the command line and the "
              "traceback above (rerun with --debug for the full context)")


def _path_of(e: OSError) -> str:
    names = [n for n in (e.filename, e.filename2) if n]
    return " -> ".join(str(n) for n in names)


def _os_error_message(e: OSError) -> str | None:
    """The user's view of an OS error (permissions, full disk, a file where a folder should be)."""
    where = _path_of(e)
    at = f" {where}" if where else ""
    if isinstance(e, PermissionError):
        return (f"permission denied:{at}. Make it readable/writable for this user, or choose another "
                "path (e.g. another --out)")
    if isinstance(e, IsADirectoryError):
        return f"{where or 'the path'} is a directory where a file was expected: pass a file path"
    if isinstance(e, NotADirectoryError):
        return (f"{where or 'a path'}: a file stands where a directory is expected (a part of the path is "
                "a file): choose another path or remove that file")
    if isinstance(e, FileNotFoundError):
        return f"no such file or directory:{at}. Check the path" if where else str(e)
    if isinstance(e, FileExistsError):
        return f"{where or 'the path'} already exists: remove it or choose another path"
    if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return (f"no space left on the device while writing{at}. Free disk space or choose another --out; "
                "the last complete checkpoint (if any) is kept and --resume continues from it")
    if e.errno == errno.EROFS:
        return f"read-only file system:{at}. Choose a writable --out"
    if e.errno in (errno.ENAMETOOLONG, errno.ELOOP):
        return f"{e.strerror}:{at}"
    if e.errno is None:
        # transformers / huggingface_hub raise OSError without errno for a model folder or hub
        # id they cannot resolve ("... does not appear to have a file named config.json").
        text = str(e)
        if any(k in text for k in ("config.json", "model identifier", "Can't load", "does not appear to have",
                                   "huggingface.co", "local folder", "pytorch_model.bin", "safetensors")):
            return (f"{text.strip()}\nFix: give a save_pretrained folder (config.json + weights), or a hub id "
                    "that is already in the local cache (this machine runs offline)")
    return None


def user_message(e: BaseException) -> str | None:
    """One message for a user-caused failure, or None when ``e`` is a bug."""
    from saferlhf.config import ConfigError

    if isinstance(e, (UserError, ConfigError)):
        return str(e)
    try:
        from saferlhf.data.validation import DataError

        if isinstance(e, DataError):
            return str(e)
    except ImportError:  # pragma: no cover
        pass
    try:
        from saferlhf.data.multimodal import ImageLoadError

        if isinstance(e, ImageLoadError):
            return str(e)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(e, OSError):
        return _os_error_message(e)
    if isinstance(e, MemoryError):
        return "out of memory: lower --batch-size / --max-length, or use a smaller model or LoRA"
    name = type(e).__name__
    module = type(e).__module__ or ""
    if name == "OutOfMemoryError" and module.startswith("torch"):
        return (f"the accelerator ran out of memory ({str(e).splitlines()[0] if str(e) else ''}): lower "
                "--batch-size / --max-length, use --grad-accum, --gradient-checkpointing or LoRA")
    if name == "SafetensorError" or module.startswith("safetensors"):
        return (f"a .safetensors file cannot be read ({e}): it is truncated or not a safetensors file; "
                "copy the model again or point to another folder")
    if module.startswith("pyarrow"):
        return f"a parquet/arrow file cannot be read ({name}: {e}); check the file or convert it to JSON Lines"
    if isinstance(e, ConnectionError) or name in {"OfflineModeIsEnabled", "LocalEntryNotFoundError",
                                                  "RepositoryNotFoundError", "GatedRepoError",
                                                  "RevisionNotFoundError", "EntryNotFoundError",
                                                  "DatasetNotFoundError"}:
        return (f"{e}\nFix: this machine runs offline: give a local path, or download the model / dataset "
                "into the local Hugging Face cache first")
    if isinstance(e, UnicodeDecodeError):
        return f"a file is not UTF-8 text ({e}); save it as UTF-8"
    return None


def debug_enabled(argv: list[str]) -> tuple[bool, list[str]]:
    """Whether ``--debug`` (or ``SAFERLHF_DEBUG=1``) is on, and ``argv`` without the flag."""
    on = os.environ.get(DEBUG_ENV, "").lower() in {"1", "true", "yes", "on"}
    rest = [a for a in argv if a != "--debug"]
    return on or len(rest) != len(argv), rest


def report(stage: str, e: BaseException, *, debug: bool) -> int:
    """Print the failure the way the CLI shows it; return the exit code."""
    message = user_message(e)
    if message is not None:
        if debug:
            traceback.print_exception(e, file=sys.stderr)
        print(f"saferlhf {stage}: {message}", file=sys.stderr)
        return EXIT_USER
    traceback.print_exception(e, file=sys.stderr)
    print(f"saferlhf {stage}: internal error {type(e).__name__}: {e}\n{BUG_REPORT}", file=sys.stderr)
    return EXIT_BUG
