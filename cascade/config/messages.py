"""Pydantic's validation errors -> the one-line messages users read in a ``ConfigError``.

Shared by every place that validates something a user wrote (the config file, an evaluator's
settings, the ``server:`` section, model files), so all of them read the same: the key path the
user wrote (union members' names dropped), pydantic's wording without its ``Value error, ``
prefix, every mistake rather than the first, and a "did you mean" for a misspelt key.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Collection, Mapping, Sequence
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from cascade.errors import ConfigError

__all__ = [
    "MAX_SUGGEST_EDITS",
    "Problem",
    "did_you_mean",
    "format_location",
    "joined",
    "joined_errors",
    "pydantic_message",
    "suggestion",
    "unknown_key",
    "validation_problems",
]

Loc = tuple[int | str, ...]
Problem = tuple[str, str]  # (key path, what is wrong there)

# A key this many edits (insertions, deletions, substitutions) from a known one is a typo of it.
MAX_SUGGEST_EDITS = 2
# What pydantic puts before the message of an error raised inside a validator.
_PREFIXES = ("Value error, ", "Assertion failed, ")


def format_location(loc: Sequence[int | str]) -> str:
    """``("tasks", "faq", "ladder", 1)`` -> ``tasks.faq.ladder[1]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def pydantic_message(error: ErrorDetails | Mapping[str, Any]) -> str:
    """Pydantic's message for one error, lower-cased, without its ``Value error, `` prefix."""
    text = str(error["msg"])
    for prefix in _PREFIXES:
        text = text.removeprefix(prefix)
    return text[:1].lower() + text[1:]


def did_you_mean(key: str, known: Collection[str]) -> str | None:
    """The known name closest to ``key`` within ``MAX_SUGGEST_EDITS`` edits, or None."""
    best: tuple[int, float, str] | None = None
    for name in known:
        matcher = difflib.SequenceMatcher(None, key, name)
        # difflib's alignment is an edit script, so this counts edits (never fewer than needed).
        edits = sum(
            max(i2 - i1, j2 - j1) for tag, i1, i2, j1, j2 in matcher.get_opcodes() if tag != "equal"
        )
        ranked = (edits, -matcher.ratio(), name)
        if edits <= MAX_SUGGEST_EDITS and (best is None or ranked < best):
            best = ranked
    return best[2] if best else None


def suggestion(key: str, known: Collection[str]) -> str:
    """`` (did you mean 'NAME'?)`` for the known name ``key`` is a typo of, else ``""``."""
    near = did_you_mean(key, known)
    return f" (did you mean {near!r}?)" if near else ""


def unknown_key(key: str, known: Collection[str]) -> str:
    """``unknown key``, with the known name it is a typo of when there is one."""
    return f"unknown key{suggestion(key, known)}"


def validation_problems(
    exc: ValidationError,
    model: type[BaseModel],
    data: Any,
    *,
    hints: Mapping[Loc, str] | None = None,
    also: Collection[str] = (),
) -> list[tuple[Loc, str]]:
    """Every mistake ``exc`` found in ``data``, once per place, as (key path, message).

    Args:
        exc: What ``model.model_validate(data)`` raised.
        model: The model validated; a misspelt key is compared with its fields at that place.
        data: The input validated; the key paths are walked through it to tell the keys the
            user wrote from the names pydantic gives union members.
        hints: Messages for missing keys, by their full location.
        also: More keys accepted at the top level besides the model's fields (an evaluator's
            ``type``, ``weight`` and ``name``).

    Returns:
        The key paths (as tuples, relative to ``data``) and messages, deepest first.
    """
    errors = []
    for error in exc.errors():
        where, branch = _walk(error["loc"], data, error["type"])
        errors.append((error, where, branch))
    # In a union every member complains; the one whose complaints go deepest is the member the
    # user was aiming at, and only its complaints are shown.
    aimed: dict[Loc, tuple[int | str, int]] = {}
    for error, _, branch in errors:
        if branch is not None:
            prefix, member = branch
            depth = len(error["loc"])
            if prefix not in aimed or depth > aimed[prefix][1]:
                aimed[prefix] = (member, depth)
    found: dict[tuple[Loc, str], int] = {}
    for error, where, branch in errors:
        if branch is not None and aimed[branch[0]][0] != branch[1]:
            continue
        message = _describe(error, model, where, data, hints or {}, also)
        found.setdefault((where, message), len(error["loc"]))
    # Deepest first: the error's location is then the most specific place.
    ordered = sorted(found.items(), key=lambda item: -item[1])
    return [key for key, _ in ordered]


def joined(problems: Sequence[Problem], *, path: str | None = None) -> ConfigError:
    """One ``ConfigError`` naming every problem, located at the first.

    Fixing one mistake at a time and reloading wastes the user's time, so all are named.
    """
    unique = list(dict.fromkeys(problems))
    (where, message), rest = unique[0], unique[1:]
    also = "".join(f"; {loc}: {msg}" if loc else f"; {msg}" for loc, msg in rest)
    return ConfigError(message + also, path=path, location=where or None)


def joined_errors(errors: Sequence[ConfigError]) -> ConfigError:
    """Several ``ConfigError``s as one; a single distinct one is returned as it is.

    Raises:
        ValueError: ``errors`` is empty.
    """
    if not errors:
        raise ValueError("no errors to join")
    unique: dict[tuple[str | None, str], ConfigError] = {}
    for error in errors:
        unique.setdefault((error.location, error.message), error)
    if len(unique) == 1:
        return errors[0]
    combined = joined([(e.location or "", e.message) for e in unique.values()], path=errors[0].path)
    combined.__cause__ = errors[0]
    return combined


def _walk(loc: Loc, data: Any, kind: str) -> tuple[Loc, tuple[Loc, int | str] | None]:
    """The key path the user wrote, and where a union member's name first appears in ``loc``.

    A part that is a key (or index) of the data at that point was written by the user; a
    missing key, at the end, is named too; anything else is pydantic naming a union member.
    """
    node = data
    kept: list[int | str] = []
    branch: tuple[Loc, int | str] | None = None
    for i, part in enumerate(loc):
        if _holds(node, part):
            kept.append(part)
            node = node[part]
        elif i == len(loc) - 1 and (
            kind == "missing" or (kind == "value_error" and isinstance(node, Mapping))
        ):
            # A missing key, or a key left to its default whose validator refused it
            # (server.direct_max_cost_usd once direct calls are allowed): named all the same.
            kept.append(part)
        elif branch is None:
            branch = (tuple(loc[:i]), part)
    return tuple(kept), branch


def _holds(node: Any, part: int | str) -> bool:
    if isinstance(node, Mapping):
        return part in node
    return isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)


def _describe(
    error: ErrorDetails,
    model: type[BaseModel],
    where: Loc,
    data: Any,
    hints: Mapping[Loc, str],
    also: Collection[str],
) -> str:
    kind = error["type"]
    if kind == "extra_forbidden" and where:
        known = set(_fields_at(model, where[:-1]))
        if len(where) == 1:
            known |= set(also)
        parent = _node_at(data, where[:-1])
        taken = set(parent) if isinstance(parent, Mapping) else set()
        return unknown_key(str(where[-1]), known - taken)
    if kind == "missing":
        return hints.get(tuple(error["loc"]), "required key is missing")
    value = error.get("input")
    message = pydantic_message(error)
    if isinstance(value, (dict, list)):
        # A validator of a whole section gets the section: its type says nothing.
        return message if kind == "value_error" else f"{message} (got {type(value).__name__})"
    return f"{message} (got {value!r})"


def _node_at(data: Any, where: Loc) -> Any:
    for part in where:
        data = data[part]
    return data


def _fields_at(model: type[BaseModel], where: Loc) -> list[str]:
    """The keys the schema accepts at ``where`` (a key path the user wrote)."""
    kinds: list[Any] = [model]
    for part in where:
        kinds = [step for kind in kinds for m in _members(kind) for step in _step(m, part)]
    return [
        name
        for kind in kinds
        for member in _members(kind)
        if isinstance(member, type) and issubclass(member, BaseModel)
        for name in member.model_fields
    ]


def _members(kind: Any) -> list[Any]:
    """A type's alternatives, with ``Annotated`` and unions unwrapped."""
    origin = get_origin(kind)
    if origin is Annotated:
        return _members(get_args(kind)[0])
    if origin is Union or origin is types.UnionType:
        return [member for arg in get_args(kind) for member in _members(arg)]
    return [kind]


def _step(kind: Any, part: int | str) -> list[Any]:
    """The type found one key (or index) down from ``kind``."""
    origin = get_origin(kind)
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        field = kind.model_fields.get(part) if isinstance(part, str) else None
        return [field.annotation] if field is not None else []
    if origin in (dict, Mapping) and isinstance(part, str):
        return [get_args(kind)[1]]
    if origin in (list, Sequence) and isinstance(part, int):
        return [get_args(kind)[0]]
    return []
