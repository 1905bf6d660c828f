"""Read question/answer examples from JSONL, JSON, CSV, parquet and Hugging Face datasets.

Every format ends as a list of :class:`Example`. Field names may be dotted paths into nested rows,
with integer parts indexing lists (``prompt.0.content``, ``reward_model.ground_truth``), so the verl
row format used by the 1-shot RLVR paper needs no conversion. With the default
``question_field="auto"`` / ``answer_field="auto"`` a verl row (``prompt`` a chat list,
``reward_model`` a dict) is read as question ``prompt.-1.content`` (the last message, which is the
user turn) and answer ``reward_model.ground_truth``; any other row uses the first present name of
:data:`AUTO_QUESTION_FIELDS` / :data:`AUTO_ANSWER_FIELDS`. The choice is made once per file, from
its first row, so every row of a file is read the same way.
"""

from __future__ import annotations

import csv
import io
import json
import re
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reprokit.data.errors import DataError

__all__ = [
    "AUTO",
    "AUTO_ANSWER_FIELDS",
    "AUTO_QUESTION_FIELDS",
    "SUPPORTED_EXTENSIONS",
    "Example",
    "read_examples",
]

AUTO = "auto"
AUTO_QUESTION_FIELDS = ("question", "problem", "prompt", "query", "input")
AUTO_ANSWER_FIELDS = ("answer", "final_answer", "ground_truth", "label", "target")
VERL_QUESTION_FIELD = "prompt.-1.content"
VERL_ANSWER_FIELD = "reward_model.ground_truth"
SUPPORTED_EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet")
_SUPPORTED_TEXT = (
    ".jsonl, .json, .csv, .parquet, a folder written by datasets' save_to_disk, "
    "or a Hugging Face Hub dataset id such as 'owner/name'"
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_MISSING = object()


@dataclass
class Example:
    """One problem with its reference answer.

    Attributes:
        id: the ``id_field`` value, else the row's 0-based position in its file.
        question: the problem text as stored (no template, no suffix added).
        answer: the reference answer as text (lists joined with ", ", numbers through ``str``).
        fields: the whole source row, so a reward function can use extra columns.
    """

    id: str
    question: str
    answer: str
    fields: dict = field(default_factory=dict)


class _RowError(Exception):
    """A problem with one row; becomes a DataError or, with skip_invalid, a skipped row."""


@dataclass
class _Record:
    location: str  # "data.jsonl line 4" / "data.parquet row 3"
    index: int  # 0-based position among the file's records, the default id
    row: Any = None
    error: str | None = None  # set when the record could not even be parsed


def read_examples(
    path: str | Path,
    *,
    question_field: str = AUTO,
    answer_field: str = AUTO,
    id_field: str | None = None,
    skip_invalid: bool = False,
    split: str | None = None,
    config: str | None = None,
) -> list[Example]:
    """Read a file, a ``save_to_disk`` folder or a Hub dataset into examples.

    Args:
        path: ``.jsonl`` (one object per line, blank lines skipped), ``.json`` (a list of objects or
            ``{"data": [...]}``), ``.csv`` (header row; a UTF-8 BOM is fine), ``.parquet``, a folder
            written by ``datasets.Dataset.save_to_disk``, or a Hub id ``owner/name``
            (loaded with ``datasets.load_dataset``).
        question_field: column or dotted path of the problem text; ``"auto"`` detects it (module doc).
        answer_field: column or dotted path of the reference answer; ``"auto"`` detects it.
        id_field: column or dotted path of an id; by default the row position is the id.
        skip_invalid: skip rows that cannot be read (bad JSON line, missing or empty field) and
            report them in one warning instead of raising.
        split: split of a ``DatasetDict`` folder or Hub dataset (needed when it has several).
        config: Hub dataset configuration name.

    Raises:
        DataError: naming the file, the line or row, the field and the fix.
    """
    source, records = _open_records(path, split=split, config=config)
    return _build_examples(
        source,
        records,
        question_field=question_field,
        answer_field=answer_field,
        id_field=id_field,
        skip_invalid=skip_invalid,
    )


# ---------------------------------------------------------------------------------------------
# Turning records into examples


def _build_examples(
    source: str,
    records: Iterator[_Record],
    *,
    question_field: str,
    answer_field: str,
    id_field: str | None,
    skip_invalid: bool,
    answer_getter: Callable[[Mapping], str] | None = None,
) -> list[Example]:
    """Examples from parsed records; ``answer_getter`` (raising ``_RowError``) replaces ``answer_field``."""
    examples: list[Example] = []
    bad: list[str] = []
    seen = 0
    q_path = a_path = None  # resolved from the first readable row when left at "auto"
    for record in records:
        seen += 1
        try:
            if record.error is not None:
                raise _RowError(record.error)
            row = record.row
            if not isinstance(row, Mapping):
                raise _RowError(f"expected an object with named fields, got {type(row).__name__}")
            if q_path is None or a_path is None:
                q_path = _resolve_auto(row, question_field, "question")
                a_path = _resolve_auto(row, answer_field, "answer") if answer_getter is None else ""
            question = _text(row, q_path, "question_field", join_lists=False)
            if answer_getter is None:
                answer = _text(row, a_path, "answer_field", join_lists=True)
            else:
                answer = answer_getter(row)
            if id_field is None:
                example_id = str(record.index)
            else:
                example_id = _text(row, id_field, "id_field", join_lists=False)
            examples.append(Example(id=example_id, question=question, answer=answer, fields=dict(row)))
        except _RowError as err:
            message = f"{record.location}: {err}"
            if not skip_invalid:
                raise DataError(message + " (or pass skip_invalid=True to skip such rows)") from None
            bad.append(message)
    if seen == 0:
        raise DataError(f"{source}: the file is empty (no rows); point to a file with at least one example")
    if bad:
        if not examples:
            raise DataError(f"{source}: all {len(bad)} rows are invalid; first: {bad[0]}")
        warnings.warn(
            f"{source}: skipped {len(bad)} invalid row(s) of {seen} (skip_invalid=True); first: {bad[0]}",
            stacklevel=3,
        )
    return examples


def _resolve_auto(row: Mapping, name: str, role: str) -> str:
    if name != AUTO:
        return name
    if _is_verl_row(row):
        return VERL_QUESTION_FIELD if role == "question" else VERL_ANSWER_FIELD
    candidates = AUTO_QUESTION_FIELDS if role == "question" else AUTO_ANSWER_FIELDS
    for candidate in candidates:
        if candidate in row:
            return candidate
    raise _RowError(
        f"no {role} field found (tried {', '.join(candidates)}); the row has fields: {_field_list(row)}; "
        f"pass {role}_field= naming the right one"
    )


def _is_verl_row(row: Mapping) -> bool:
    prompt, reward = row.get("prompt"), row.get("reward_model")
    return (
        isinstance(prompt, Sequence)
        and not isinstance(prompt, str)
        and len(prompt) > 0
        and isinstance(prompt[-1], Mapping)
        and "content" in prompt[-1]
        and isinstance(reward, Mapping)
        and "ground_truth" in reward
    )


def _lookup(row: Mapping, path: str) -> Any:
    """``row[path]``, else walk the dotted path (integer parts index lists, negatives from the end)."""
    if path in row:
        return row[path]
    current: Any = row
    for part in path.split("."):
        if isinstance(current, Mapping):
            if part not in current:
                return _MISSING
            current = current[part]
        elif isinstance(current, Sequence) and not isinstance(current, str):
            try:
                index = int(part)
            except ValueError:
                return _MISSING
            if not -len(current) <= index < len(current):
                return _MISSING
            current = current[index]
        else:
            return _MISSING
    return current


def _text(row: Mapping, path: str, option: str, *, join_lists: bool) -> str:
    value = _lookup(row, path)
    if value is _MISSING:
        raise _RowError(
            f"field '{path}' not found; the row has fields: {_field_list(row)}; "
            f"set {option} to one of them (dotted paths such as 'prompt.0.content' reach nested values)"
        )
    if value is None:
        raise _RowError(f"field '{path}' is null; fill it in or set {option} to another field")
    if isinstance(value, str):
        text = value
    elif isinstance(value, (bool, int, float)):
        text = str(value)
    elif isinstance(value, Sequence) and join_lists:
        text = ", ".join(str(item) for item in value)
    elif isinstance(value, (Sequence, Mapping)):
        hint = " (for a chat list use a path such as 'prompt.-1.content')" if option == "question_field" else ""
        raise _RowError(f"field '{path}' holds a {type(value).__name__}, expected text{hint}")
    else:
        text = str(value)
    if not text.strip():
        raise _RowError(f"field '{path}' is empty; fill it in or set {option} to another field")
    return text


def _field_list(row: Mapping) -> str:
    return ", ".join(map(str, row.keys())) or "(none)"


# ---------------------------------------------------------------------------------------------
# Opening sources: each yields _Record objects


def _open_records(path: str | Path, *, split: str | None, config: str | None) -> tuple[str, Iterator[_Record]]:
    p = Path(path)
    if p.is_dir():
        return str(p), _hf_records(_load_from_disk(p, split), str(p))
    suffix = p.suffix.lower()
    if p.is_file():
        readers = {".jsonl": _jsonl_records, ".json": _json_records, ".csv": _csv_records, ".parquet": _parquet_records}
        if suffix not in readers:
            raise DataError(f"{p}: unsupported file type '{p.suffix or '(none)'}'; supported: {_SUPPORTED_TEXT}")
        return str(p), readers[suffix](p)
    if suffix not in SUPPORTED_EXTENSIONS and isinstance(path, str) and _HUB_ID.match(path):
        return path, _hf_records(_load_from_hub(path, split, config), path)
    raise DataError(f"{p}: file not found; check the path (supported: {_SUPPORTED_TEXT})")


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read the file ({err})") from None


def _decode_whole(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")  # a leading BOM (Excel's CSV export) is dropped
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(
            f"{path} line {line}: bytes are not valid UTF-8 (0x{data[err.start]:02x} at byte {err.start}); "
            "re-save the file as UTF-8"
        ) from None


def _jsonl_records(path: Path) -> Iterator[_Record]:
    data = _read_bytes(path)
    index = 0
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        if not raw.strip():
            continue
        location = f"{path} line {number}"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            bad = (
                f"bytes are not valid UTF-8 (0x{raw[err.start]:02x} at column {err.start + 1}); "
                "re-save the file as UTF-8"
            )
            yield _Record(location, index, error=bad)
        else:
            try:
                yield _Record(location, index, row=json.loads(text))
            except json.JSONDecodeError as err:
                yield _Record(location, index, error=f"invalid JSON ({err.msg} at column {err.colno})")
        index += 1


def _json_records(path: Path) -> Iterator[_Record]:
    text = _decode_whole(path, _read_bytes(path))
    if not text.strip():
        return iter(())
    try:
        document = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(
            f"{path} line {err.lineno} column {err.colno}: invalid JSON ({err.msg}); "
            "fix the file (a JSON list of objects, or one object per line saved as .jsonl)"
        ) from None
    if isinstance(document, Mapping) and isinstance(document.get("data"), list):
        rows = document["data"]
    elif isinstance(document, list):
        rows = document
    else:
        if isinstance(document, Mapping):
            shape = f"an object with keys {_field_list(document)}"
        else:
            shape = type(document).__name__
        raise DataError(f'{path}: expected a JSON list of objects or {{"data": [...]}}, got {shape}')
    return (_Record(f"{path} row {i}", i, row=row) for i, row in enumerate(rows))


def _csv_records(path: Path) -> Iterator[_Record]:
    text = _decode_whole(path, _read_bytes(path))
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next((values for values in reader if values), None)
        if header is None:
            return
        index = 0
        for values in reader:
            if not values:  # blank line
                continue
            location = f"{path} line {reader.line_num}"
            if len(values) != len(header):
                bad = f"the row has {len(values)} values but the header has {len(header)} columns"
                yield _Record(location, index, error=bad)
            else:
                yield _Record(location, index, row=dict(zip(header, values)))
            index += 1
    except csv.Error as err:
        raise DataError(f"{path} line {reader.line_num}: malformed CSV ({err}); check the quoting") from None


def _parquet_records(path: Path) -> Iterator[_Record]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as err:  # pyarrow raises several unrelated types for unreadable files
        raise DataError(f"{path}: not a readable parquet file ({type(err).__name__}: {err})") from None
    return (_Record(f"{path} row {i}", i, row=row) for i, row in enumerate(rows))


def _hf_records(dataset: Any, source: str) -> Iterator[_Record]:
    return (_Record(f"{source} row {i}", i, row=row) for i, row in enumerate(dataset))


def _pick_split(dataset: Any, split: str | None, where: str) -> Any:
    """A ``Dataset`` from what ``load_from_disk`` / ``load_dataset`` returned."""
    import datasets

    if not isinstance(dataset, (datasets.DatasetDict, dict)):
        return dataset
    names = list(dataset.keys())
    if split is not None:
        if split not in dataset:
            raise DataError(f"{where}: no split '{split}'; available splits: {', '.join(names)}")
        return dataset[split]
    if len(names) == 1:
        return dataset[names[0]]
    raise DataError(f"{where}: several splits ({', '.join(names)}); pass split= to choose one")


def _load_from_disk(path: Path, split: str | None) -> Any:
    if not any((path / marker).exists() for marker in ("state.json", "dataset_dict.json")):
        raise DataError(
            f"{path}: a folder must be written by datasets' save_to_disk (state.json or dataset_dict.json "
            f"not found); otherwise point to a file ({', '.join(SUPPORTED_EXTENSIONS)})"
        )
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as err:
        raise DataError(f"{path}: cannot load the saved dataset ({type(err).__name__}: {err})") from None
    return _pick_split(loaded, split, str(path))


def _load_from_hub(name: str, split: str | None, config: str | None) -> Any:
    from reprokit.data._hub import load_hub_dataset

    loaded, reason = load_hub_dataset(name, config, split)
    if loaded is None:
        raise DataError(
            f"{name}: not a local file, and not loadable as a Hugging Face Hub dataset ({reason}); "
            "check the path or the Hub id and the network"
        )
    return _pick_split(loaded, split, name)
