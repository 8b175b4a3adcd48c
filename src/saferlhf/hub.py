"""Hugging Face hub ids for models and datasets, offline by default.

Every stage takes a model as a local folder **or** a hub id (``org/name``, optionally
``org/name@revision``) and data as a local file or a hub dataset id. Offline is the default
(``saferlhf`` sets ``HF_HUB_OFFLINE=1`` unless the user set it): a hub id then resolves from
the local Hugging Face cache (``$HF_HOME/hub``, the layout ``hf download`` writes:
``models--org--name/snapshots/<commit>/…`` with ``refs/<branch>``), never from the network.
``saferlhf --online <stage> …`` (or an explicit ``HF_HUB_OFFLINE=0``) lets hub downloads through.

Why datasets are resolved here too: ``datasets.load_dataset("org/name")`` offline reads only its
own processed Arrow cache (a dataset loaded online once before), not the hub cache that
``hf download --repo-type dataset`` fills. A cached hub snapshot is therefore opened as a local
dataset folder (its README configs and ``split`` file patterns apply exactly as on the hub).
"""

from __future__ import annotations

import os
import re

ONLINE_FLAG = "--online"

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?(@[\w.\-/]+)?$")


def is_offline() -> bool:
    """Whether hub access is off (``HF_HUB_OFFLINE`` truthy; saferlhf's CLI defaults it to 1)."""
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().upper() in {"1", "ON", "YES", "TRUE"}


def set_online(online: bool) -> None:
    """Set the hub environment for this process: ``online`` lets downloads through; otherwise
    offline unless the user explicitly set ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``.

    Must run before ``huggingface_hub`` is imported (it reads the variables once)."""
    if online:
        os.environ["HF_HUB_OFFLINE"] = "0"
        os.environ["HF_DATASETS_OFFLINE"] = "0"
    else:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", os.environ["HF_HUB_OFFLINE"])


def looks_like_hub_id(name: str) -> bool:
    """``org/name`` or ``name`` (optionally ``@revision``) that is not a path on this machine."""
    if not name or name.startswith((".", "/", "~")) or os.path.exists(name):
        return False
    return bool(_HUB_ID.match(name))


def split_revision(name: str) -> tuple[str, str | None]:
    """``"org/name@rev"`` -> ``("org/name", "rev")``; no ``@`` -> ``(name, None)``."""
    repo, sep, rev = name.partition("@")
    return repo, (rev or None) if sep else None


def _offline_hint(kind: str, repo: str) -> str:
    flag = " --repo-type dataset" if kind == "dataset" else ""
    return (f"{kind} {repo!r} is neither a local path nor in the Hugging Face cache "
            f"({os.environ.get('HF_HOME') or '~/.cache/huggingface'}/hub). Offline is the default: "
            f"download it once with `hf download{flag} {repo}` (or run `saferlhf {ONLINE_FLAG} …` / "
            "set HF_HUB_OFFLINE=0 to let saferlhf download it), or pass a local path")


def resolve_model(name_or_path: str | os.PathLike, *, revision: str | None = None) -> str:
    """A local folder for a model: the path itself, or the cached (offline) / downloaded
    (online) snapshot of a hub id. Raises ``FileNotFoundError`` naming the fix."""
    name = str(name_or_path)
    if os.path.exists(name) or not looks_like_hub_id(name):
        return name
    repo, rev = split_revision(name)
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo, revision=revision or rev, local_files_only=is_offline())
    except Exception as error:  # LocalEntryNotFoundError, RepositoryNotFoundError, HTTP errors
        if is_offline():
            raise FileNotFoundError(_offline_hint("model", repo)) from error
        raise FileNotFoundError(f"model {name!r}: not a local path and the hub download failed "
                                f"({type(error).__name__}: {error})") from error


def cached_dataset_snapshot(repo_id: str, revision: str | None = None) -> str | None:
    """The cached snapshot folder of a hub dataset, or ``None`` when it is not cached."""
    if not looks_like_hub_id(repo_id):
        return None
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, repo_type="dataset", revision=revision, local_files_only=True)
    except (OSError, ValueError):  # not cached (LocalEntryNotFoundError), not a valid repo id
        return None


def dataset_hint(repo_id: str) -> str:
    return _offline_hint("dataset", repo_id)


def hub_data_options(cfg, prefix: str = "data") -> dict[str, str | None]:
    """``split`` / ``config`` / ``revision`` keyword arguments of the data loaders from a stage
    config's ``{prefix}_split`` / ``{prefix}_config`` / ``{prefix}_revision`` (absent: None).

    ``eval_data`` options fall back to the ``data`` ones for config and revision (the same hub
    dataset, another split)."""
    def get(key: str):
        value = getattr(cfg, f"{prefix}_{key}", None)
        if value is None and prefix != "data" and key != "split":
            value = getattr(cfg, f"data_{key}", None)
        return value

    return {"split": get("split"), "config": get("config"), "revision": get("revision")}


def hub_data_options_for(source, cfg, field: str, prefix: str | None = None) -> dict[str, str | None]:
    """:func:`hub_data_options` of ``cfg`` (options ``{prefix}_*``, ``prefix`` defaulting to
    ``field``) when ``source`` is the config's own ``field`` (the dataset the options were given
    for); ``{}`` for a dataset passed in its place (a ``datasets.Dataset``, a list of records,
    another path)."""
    return hub_data_options(cfg, prefix or field) if source is getattr(cfg, field, None) else {}


# Model-field values that name a built-in model, never a hub repository.
STAGE_KEYWORDS = frozenset({"tiny", "minilm"})

MODEL_FIELDS = ("model", "policy", "reward_model", "cost_model", "tokenizer", "guard", "policy_a",
                "policy_b")


def resolve_config_models(cfg) -> None:
    """Replace hub ids in a stage config's model fields by their local snapshot folders.

    ``org/name`` that is not a local path must resolve (else ``FileNotFoundError`` naming the
    fix); a bare ``name`` is resolved only when the cache (or the hub, online) has it, and is
    otherwise left to the stage, where it may be a keyword (``tiny``, ``minilm``)."""
    for key in MODEL_FIELDS:
        value = getattr(cfg, key, None)
        if not (isinstance(value, str) and looks_like_hub_id(value)) or value in STAGE_KEYWORDS:
            continue
        if "/" in split_revision(value)[0]:
            setattr(cfg, key, resolve_model(value))
            continue
        try:
            setattr(cfg, key, resolve_model(value))
        except FileNotFoundError:
            pass

