"""Raw rows from wherever the data lives, each with its position for reports.

Sources:

* a local JSON Lines file (``.jsonl``, also ``.jsonl.gz``/``.xz``/``.bz2``), read line by
  line: a malformed line is one bad record at ``file:line`` (1-based), not a failed load;
* a local ``.json`` file: a JSON array of records (or an object holding one such array), or
  JSON Lines under a ``.json`` name (common on the hub); rows are numbered from 0;
* a local ``.parquet`` file, read in record batches with pyarrow (HF ``Image`` columns stay
  undecoded ``{"bytes", "path"}`` dicts, so images are opened only to be checked);
* a Hugging Face hub id (``"PKU-Alignment/PKU-SafeRLHF"``) with ``config``/``split``/
  ``revision``, through ``datasets.load_dataset`` (offline here; a pinned ``revision`` makes
  recipes reproducible);
* in memory: a ``datasets.Dataset``/``IterableDataset`` or any iterable of mappings.

``datasets`` and ``pyarrow`` are imported only when such a source is read, so importing
``saferlhf.data`` stays cheap.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saferlhf.data.validation import MALFORMED_JSON, NOT_AN_OBJECT, DataError, RecordProblem

Row = dict[str, Any] | RecordProblem
"""A raw record, or the problem that kept a line from being one."""

_COMPRESSED = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}
_BATCH_ROWS = 4096


@dataclass
class RawSource:
    """Rows of one source, with how to name their positions.

    ``rows`` yields ``(position, row)``; ``position`` is a 1-based line number when
    ``line_based`` (JSON Lines), else a 0-based row index. ``directory`` is where relative
    image paths are resolved by default (the data file's folder; ``None`` for hub/memory).
    """

    label: str
    line_based: bool
    directory: Path | None
    rows: Iterator[tuple[int, Row]]

    def where(self, position: int) -> str:
        """The position in words: ``"data.jsonl line 12"`` or ``"PKU-SafeRLHF row 12"``."""
        return f"{self.label} {'line' if self.line_based else 'row'} {position}"


def open_source(
    source: Any,
    *,
    split: str | None = None,
    config: str | None = None,
    revision: str | None = None,
) -> RawSource:
    """The rows of ``source`` (a path, a hub id, a ``Dataset`` or an iterable of mappings)."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_file():
            return _open_file(path)
        if path.exists():
            raise DataError(f"{path} is a directory; pass one .jsonl/.json/.parquet file")
        if isinstance(source, Path) or _looks_like_file(str(source)):
            raise FileNotFoundError(f"data file {source} does not exist")
        return _open_hub(str(source), split=split, config=config, revision=revision)
    if _is_hf_dataset(source):
        name = getattr(getattr(source, "info", None), "dataset_name", None)
        return _from_dataset(source, label=f"<dataset {name}>" if name else "<dataset>")
    if isinstance(source, Mapping):
        raise TypeError("a single mapping is not a data source; pass a list of records")
    if isinstance(source, Iterable):
        return RawSource("<memory>", False, None, _enumerate_mappings(source))
    raise TypeError(f"cannot read data from {type(source).__name__}")


def _looks_like_file(text: str) -> bool:
    suffixes = Path(text).suffixes
    return bool(suffixes) and suffixes[-1] in {".jsonl", ".json", ".parquet", *_COMPRESSED}


def _open_file(path: Path) -> RawSource:
    suffixes = [s.lower() for s in path.suffixes]
    compressed = suffixes[-1] if suffixes and suffixes[-1] in _COMPRESSED else None
    kind = suffixes[-2] if compressed and len(suffixes) > 1 else (suffixes[-1] if suffixes else "")
    if kind == ".jsonl":
        return RawSource(str(path), True, path.parent, _jsonl_rows(path, compressed))
    if kind == ".json":
        return _json_source(path, compressed)
    if kind == ".parquet" and not compressed:
        return RawSource(str(path), False, path.parent, _parquet_rows(path))
    raise DataError(f"{path}: unknown data file type; use .jsonl, .json or .parquet")


def _open_text(path: Path, compressed: str | None):
    opener = _COMPRESSED[compressed] if compressed else open
    # utf-8-sig: a byte-order mark (as some editors write) is not part of the first record;
    # text mode reads CRLF line ends as plain newlines.
    return opener(path, "rt", encoding="utf-8-sig")


def _jsonl_rows(path: Path, compressed: str | None) -> Iterator[tuple[int, Row]]:
    try:
        yield from _jsonl_lines(path, compressed)
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start} of a line); save the "
                        "file as UTF-8") from None
    except (OSError, EOFError) as error:
        if isinstance(error, OSError) and error.errno is not None:
            raise
        raise DataError(f"{path}: cannot be read as {'compressed ' if compressed else ''}text ({error}); "
                        "the file is damaged or not what its name says") from None


def _jsonl_lines(path: Path, compressed: str | None) -> Iterator[tuple[int, Row]]:
    loads = json.loads
    with _open_text(path, compressed) as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue  # blank lines (e.g. a trailing newline) hold no record
            try:
                row = loads(line)
            except json.JSONDecodeError as error:
                yield number, RecordProblem(
                    MALFORMED_JSON, None, f"line is not valid JSON ({error.msg} at column {error.colno})",
                    f"repair or delete line {number}: each line must be one JSON object",
                )
                continue
            if type(row) is not dict:
                yield number, _not_an_object(row, f"line {number}")
                continue
            yield number, row


def _not_an_object(row: Any, where: str) -> RecordProblem:
    return RecordProblem(NOT_AN_OBJECT, None, f"record is a JSON {type(row).__name__}, not an object",
                         f"make {where} a JSON object with the record's fields")


def _json_source(path: Path, compressed: str | None) -> RawSource:
    try:
        with _open_text(path, compressed) as file:
            text = file.read()
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start}); save it as UTF-8") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        if error.msg == "Extra data":  # more than one top-level value: JSON Lines named .json
            return RawSource(str(path), True, path.parent, _jsonl_rows(path, compressed))
        raise DataError(
            f"{path} line {error.lineno} column {error.colno}: not valid JSON ({error.msg}); "
            "a broken JSON array cannot be read record by record: repair the file, or store it "
            "as JSON Lines (one record per line) so that bad lines are skipped and reported"
        ) from error
    if isinstance(data, dict):
        lists = [value for value in data.values() if isinstance(value, list)]
        if len(lists) != 1:
            raise DataError(f"{path}: a JSON object holding {len(lists)} lists; expected an array of "
                            "records, or an object holding exactly one array of records")
        data = lists[0]
    if not isinstance(data, list):
        raise DataError(f"{path}: top-level JSON {type(data).__name__}; expected an array of records")
    return RawSource(str(path), False, path.parent, _enumerate_mappings(data))


def _enumerate_mappings(rows: Iterable[Any]) -> Iterator[tuple[int, Row]]:
    for index, row in enumerate(rows):
        if isinstance(row, dict):
            yield index, row
        elif isinstance(row, Mapping):
            yield index, dict(row)
        else:
            yield index, _not_an_object(row, f"row {index}")


def _parquet_rows(path: Path) -> Iterator[tuple[int, Row]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        yield from _parquet_batches(pq.ParquetFile(path))
    except (pa.ArrowException, OSError) as error:
        if isinstance(error, OSError) and error.errno is not None:
            raise
        raise DataError(f"{path}: not a readable parquet file ({type(error).__name__}: {error}); check the file "
                        "(an interrupted download?) or convert it to JSON Lines") from None


def _parquet_batches(file) -> Iterator[tuple[int, Row]]:
    index = 0
    for batch in file.iter_batches(batch_size=_BATCH_ROWS):
        # Column by column, then zipped: about twice as fast as RecordBatch.to_pylist().
        names = batch.schema.names
        columns = [column.to_pylist() for column in batch.columns]
        for values in zip(*columns, strict=True):
            yield index, dict(zip(names, values, strict=True))
            index += 1


def _is_hf_dataset(source: Any) -> bool:
    module = type(source).__module__
    return module.startswith("datasets.") and hasattr(source, "features")


def _open_hub(repo_id: str, *, split: str | None, config: str | None, revision: str | None) -> RawSource:
    import datasets

    from saferlhf.hub import cached_dataset_snapshot, dataset_hint, is_offline

    # Offline, datasets reads only its own Arrow cache; a hub snapshot (what `hf download` writes)
    # is opened as a local dataset folder instead (same README configs and split patterns).
    snapshot = cached_dataset_snapshot(repo_id, revision) if is_offline() else None
    try:
        if snapshot is not None:
            loaded = datasets.load_dataset(snapshot, name=config, split=split)
        else:
            loaded = datasets.load_dataset(repo_id, name=config, split=split, revision=revision)
    except ConnectionError as error:
        raise DataError(dataset_hint(repo_id)) from error
    except ValueError as error:  # an unknown split or config name
        raise DataError(f"{repo_id}: {error} (pick one with --data-split / --data-config)") from error
    if isinstance(loaded, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        if len(loaded) != 1:
            raise DataError(f"{repo_id} has splits {sorted(loaded)}; pass split= (CLI: --data-split)")
        split, loaded = next(iter(loaded.items()))
    label = f"{repo_id}[{config or 'default'}/{split}{f'@{revision}' if revision else ''}]"
    return _from_dataset(loaded, label=label)


def _from_dataset(dataset: Any, *, label: str) -> RawSource:
    """Rows of a ``datasets.Dataset`` (batched, images left undecoded) or ``IterableDataset``."""
    import datasets

    for name, feature in (dataset.features or {}).items():
        if isinstance(feature, datasets.Image) and feature.decode:
            # Undecoded {"bytes", "path"} dicts: images are checked, not held as pixels.
            dataset = dataset.cast_column(name, datasets.Image(decode=False))
    if isinstance(dataset, datasets.Dataset):
        return RawSource(label, False, None, _dataset_rows(dataset))
    return RawSource(label, False, None, _enumerate_mappings(dataset))


def _dataset_rows(dataset: Any) -> Iterator[tuple[int, Row]]:
    index = 0
    for batch in dataset.iter(batch_size=_BATCH_ROWS):
        names = list(batch)
        for values in zip(*(batch[name] for name in names), strict=True):
            yield index, dict(zip(names, values, strict=True))
            index += 1
