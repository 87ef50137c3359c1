"""The replay dataset format: recorded answers of several models to the same queries.

A dataset is a JSONL file (optionally gzip-compressed, ``.jsonl.gz``) with one query per line::

    {"id": "gsm8k-17", "task": "math",
     "messages": [{"role": "user", "content": "..."}],
     "responses": {
       "mixtral": {"text": "...", "input_tokens": 120, "output_tokens": 85,
                   "cost_usd": 0.00004, "latency_ms": 900, "logprob": -0.12, "score": 1.0},
       "gpt-4":   {"text": "...", "score": 1.0}},
     "meta": {"split": "test"}}

``responses`` is keyed by model name. ``score`` is the ground-truth quality of that answer in
[0, 1]; it exists for reporting only and must never reach an evaluator. Everything but ``text``
and ``score`` is optional. Blank lines are skipped; any other malformed line raises
``DatasetError`` naming the file, the 1-based line and the field, e.g.
``data.jsonl:17: responses.gpt-4.score: must be <= 1``.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError

from cascade.errors import DatasetError

__all__ = [
    "DatasetError",
    "RecordedResponse",
    "ReplayMessage",
    "ReplayRecord",
    "iter_dataset",
    "load_dataset",
    "write_dataset",
]

_CONFIG = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

# Strict scalars so that "120" or 1.0 as a token count is an error rather than silently coerced:
# the files are a contract between tools written in any language. Containers stay lax so that
# Python callers may pass lists where the model stores tuples.
_Int = Annotated[int, Strict()]
_Float = Annotated[float, Strict()]
_Str = Annotated[str, Strict()]


class RecordedResponse(BaseModel):
    """One model's recorded answer to one query.

    Attributes:
        text: The answer text (may be empty: some models do answer with nothing).
        input_tokens: Prompt tokens, if known.
        output_tokens: Completion tokens, if known.
        cost_usd: What the call cost, if known; replay uses it instead of config prices.
        latency_ms: Wall time of the call, if known.
        logprob: Mean token log-probability of the answer, if known.
        score: Ground-truth quality in [0, 1]. For reporting only, never shown to evaluators.
    """

    model_config = _CONFIG

    text: _Str
    input_tokens: _Int | None = Field(default=None, ge=0)
    output_tokens: _Int | None = Field(default=None, ge=0)
    cost_usd: _Float | None = Field(default=None, ge=0)
    latency_ms: _Float | None = Field(default=None, ge=0)
    logprob: _Float | None = Field(default=None, le=0)
    score: _Float = Field(ge=0, le=1)


class ReplayMessage(BaseModel):
    """One chat message of the query, OpenAI style."""

    model_config = _CONFIG

    role: Literal["system", "user", "assistant"]
    content: _Str


class ReplayRecord(BaseModel):
    """One query with every model's recorded answer.

    Attributes:
        id: Unique within the file and stable across re-imports (e.g. ``gsm8k-17``).
        task: The task name a cascade config routes on, if the dataset has one.
        messages: The conversation sent to every model.
        responses: Model name -> recorded answer. A model without an answer is simply absent.
        meta: Free-form extras such as ``split`` or the source subset.
    """

    model_config = _CONFIG

    id: _Str = Field(min_length=1)
    task: _Str | None = None
    messages: tuple[ReplayMessage, ...] = Field(min_length=1)
    responses: dict[str, RecordedResponse] = Field(min_length=1)
    meta: dict[str, Any] = Field(default_factory=dict)


def iter_dataset(path: str | os.PathLike[str]) -> Iterator[ReplayRecord]:
    """Stream the records of a JSONL dataset, validating each line.

    Args:
        path: A ``.jsonl`` file, or ``.jsonl.gz``.

    Returns:
        An iterator of records in file order.

    Raises:
        DatasetError: The file cannot be read, or a line is malformed (bad JSON, a wrong type,
            a score outside [0, 1], a missing field, a duplicate id). The message starts with
            ``<path>:<line>:``.
    """
    name = os.fspath(path)
    first_line: dict[str, int] = {}
    try:
        with _open(name, "rb", gz=name.endswith(".gz")) as fh:
            for lineno, raw in enumerate(fh, start=1):
                if not raw.strip():
                    continue
                try:
                    record = ReplayRecord.model_validate_json(raw)
                except ValidationError as exc:
                    raise DatasetError(f"{name}:{lineno}: {_describe(exc)}") from exc
                seen = first_line.setdefault(record.id, lineno)
                if seen != lineno:
                    raise DatasetError(
                        f"{name}:{lineno}: id: duplicate {record.id!r} (first on line {seen})"
                    )
                yield record
    except OSError as exc:  # missing file, permission, truncated gzip
        raise DatasetError(f"{name}: cannot read dataset: {exc}") from exc


def load_dataset(path: str | os.PathLike[str]) -> list[ReplayRecord]:
    """Read a whole JSONL dataset into memory.

    Args:
        path: A ``.jsonl`` file, or ``.jsonl.gz``.

    Returns:
        The records in file order.

    Raises:
        DatasetError: As for ``iter_dataset``.
    """
    return list(iter_dataset(path))


def write_dataset(path: str | os.PathLike[str], records: Iterable[ReplayRecord]) -> int:
    """Write records as compact JSONL, one per line, replacing ``path`` atomically.

    Fields left at their defaults (``None`` metrics, empty ``meta``) are omitted.

    Args:
        path: Target file; a ``.gz`` suffix writes gzip.
        records: The records, in the order to write them.

    Returns:
        The number of records written.

    Raises:
        DatasetError: Two records share an id (the file would not load back), or the file
            cannot be written.
    """
    name = os.fspath(path)
    # Written next to the target and renamed, so an interrupted import never leaves a
    # half-written file that looks complete.
    tmp = Path(f"{name}.tmp")
    count = 0
    try:
        with _open(str(tmp), "wb", gz=name.endswith(".gz")) as fh:
            for line in _encode(name, records):
                fh.write(line)
                count += 1
        tmp.replace(name)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DatasetError(f"{name}: cannot write dataset: {exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return count


def _encode(name: str, records: Iterable[ReplayRecord]) -> Iterator[bytes]:
    seen: set[str] = set()
    for record in records:
        if record.id in seen:
            raise DatasetError(f"{name}: duplicate id {record.id!r}; ids must be unique")
        seen.add(record.id)
        yield record.model_dump_json(exclude_defaults=True).encode() + b"\n"


def _open(name: str, mode: Literal["rb", "wb"], *, gz: bool) -> IO[bytes]:
    if gz:
        return gzip.open(name, mode)  # type: ignore[return-value]  # GzipFile is an IO[bytes]
    return open(name, mode)


_MESSAGES = {
    "less_than_equal": "must be <= {le}",
    "less_than": "must be < {lt}",
    "greater_than_equal": "must be >= {ge}",
    "greater_than": "must be > {gt}",
    "missing": "required field is missing",
    "extra_forbidden": "unknown field",
    "too_short": "must not be empty",
}


def _describe(exc: ValidationError) -> str:
    """``loc: problem`` for the first error, in the words of the format rather than pydantic's."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    template = _MESSAGES.get(first["type"])
    ctx = first.get("ctx") or {}
    problem = template.format(**{k: _num(v) for k, v in ctx.items()}) if template else first["msg"]
    if first["type"] == "json_invalid":
        problem = f"invalid JSON: {ctx.get('error', first['msg'])}"
    where = _loc(first["loc"])
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {problem}{more}" if where else f"{problem}{more}"


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _num(value: Any) -> Any:
    # pydantic reports the bound 1 as 1.0; the message reads better as written in the schema.
    return int(value) if isinstance(value, float) and value.is_integer() else value
