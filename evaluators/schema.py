"""``json_schema``: find the JSON in an answer and validate it against a JSON Schema (2020-12).

The answer is searched in a fixed order, and the first tier that yields a parsed value wins:

1. the whole answer (surrounding whitespace ignored);
2. fenced code blocks (three or more backticks or tildes), blocks tagged ``json``/``jsonc``/
   ``json5`` first, then the others, in document order; a block that does not parse is searched
   for fences nested inside it;
3. balanced ``{...}`` or ``[...]`` spans in the prose, found by a scanner that skips brackets
   inside JSON strings, outermost spans first.

Within tiers 2 and 3 the first candidate that matches the schema is accepted; when none does, the
longest one is reported, since the real payload is nearly always the longest. A trailing comma
before ``}`` or ``]`` (``{"a": 1,}``) is tolerated and mentioned in the reason.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError, best_match
from pydantic import BaseModel, ConfigDict, Field, model_validator
from referencing import Registry
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012

from cascade.config import safe_load_bounded
from cascade.config.paths import read_capped
from cascade.errors import ConfigError
from cascade.evaluation import EvaluatorContext
from cascade.types import Completion, Request, Verdict

__all__ = ["NOT_FOUND", "Extraction", "Found", "JsonSchema", "extract_json"]

NOT_FOUND = "no JSON object or array found in the answer"
_JSON_TAGS = frozenset({"json", "jsonc", "json5", "application/json"})
# Bounds on the prose search, so that adversarial text (500k nested "[") stays well under 1 s.
_MAX_SPAN_ATTEMPTS = 200
_TOKEN_BUDGET = 300_000
_MAX_CANDIDATES = 20
_MAX_BLOCKS = 50
_MAX_FENCE_DEPTH = 3
_MAX_ERRORS = 1000
_SNIPPET = 200
# A JSON schema is a few KB; a schema_file of /dev/zero must not be read for ever.
MAX_SCHEMA_BYTES = 8 * 1024 * 1024

# A JSON string (unterminated ones run to the end) or a structural bracket.
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[{}\[\]]', re.DOTALL)
_OPENER = re.compile(r"[{\[]")
# Skips whole strings so that only commas outside them are dropped.
_TRAILING_COMMA = re.compile(r'("[^"\\]*(?:\\.[^"\\]*)*")|,(\s*[}\]])', re.DOTALL)
_CLOSE_AFTER_COMMA = re.compile(r",\s*[}\]]")
_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})([^\n]*)$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Found:
    """A JSON value found in an answer, and how it was found."""

    value: Any
    where: str  # "the whole answer", "a fenced code block", "the prose"
    repaired: bool  # a trailing comma was dropped
    size: int


@dataclass(frozen=True, slots=True)
class Extraction:
    """Every candidate of the winning tier, plus the first parse error when there is none."""

    candidates: tuple[Found, ...]
    parse_error: str | None = None


def drop_trailing_commas(text: str) -> str:
    """``{"a": 1,}`` -> ``{"a": 1}``; commas inside strings are left alone."""
    if not _CLOSE_AFTER_COMMA.search(text):
        return text
    return _TRAILING_COMMA.sub(lambda m: m.group(1) or m.group(2), text)


def _loads(text: str) -> tuple[Any, bool] | str:
    """``(value, repaired)`` or the parse error message."""
    try:
        return json.loads(text), False
    except RecursionError:
        return "nested too deeply"
    except ValueError as exc:  # JSONDecodeError, or an integer past Python's digit limit
        error = str(exc)
    if _CLOSE_AFTER_COMMA.search(text):
        fixed = _TRAILING_COMMA.sub(lambda m: m.group(1) or m.group(2), text)
        try:
            return json.loads(fixed), True
        except (ValueError, RecursionError):
            pass
    return error


def _fenced_blocks(text: str) -> Iterator[tuple[str, str]]:
    """``(info, body)`` of each fenced block; an unclosed block runs to the end (truncation)."""
    opened: tuple[str, int, str, int] | None = None  # fence char, length, info, body start
    for m in _FENCE.finditer(text):
        marks, rest = m.group(1), m.group(2)
        if opened is None:
            if marks[0] == "`" and "`" in rest:
                continue  # inline code such as ```x```, not a fence (CommonMark)
            opened = (marks[0], len(marks), rest.strip(), m.end() + 1)
        elif marks[0] == opened[0] and len(marks) >= opened[1] and not rest.strip():
            yield opened[2], text[opened[3] : m.start()]
            opened = None
    if opened is not None:
        yield opened[2], text[opened[3] :]


def _tag(info: str) -> str:
    return info.split()[0].lower() if info.split() else ""


def _fence_candidates(text: str, depth: int = 0) -> Iterator[tuple[str, Any, bool] | str]:
    """Parsed fenced blocks (json-tagged first), or parse errors of those that failed."""
    blocks = list(itertools.islice(_fenced_blocks(text), _MAX_BLOCKS))
    for info, body in sorted(blocks, key=lambda b: _tag(b[0]) not in _JSON_TAGS):
        if not body.strip():
            continue
        parsed = _loads(body.strip())
        if isinstance(parsed, str):
            inner = list(_fence_candidates(body, depth + 1)) if depth < _MAX_FENCE_DEPTH else []
            if any(not isinstance(c, str) for c in inner):
                yield from inner
            else:
                yield f"a fenced block ({info or 'untagged'}) does not parse: {parsed}"
        else:
            yield (body, *parsed)


def _scan(text: str, start: int, ends: dict[int, int], budget: int) -> int:
    """Match brackets from the opener at ``start``, skipping JSON strings; return tokens used.

    Records the end of every span closed on the way in ``ends`` (-1: never closes), so later
    starts inside this one cost nothing: the whole search stays linear unless an opener sits
    inside a string of an earlier scan (``He said "{" then {...}``), which gets a scan of its own.
    """
    stack: list[tuple[str, int]] = []
    used = 0
    for m in _TOKEN.finditer(text, start):
        used += 1
        if used > budget:
            return used  # out of budget: leave these openers unknown rather than unbalanced
        token = m.group()
        if token[0] == '"':
            continue
        if token in "{[":
            stack.append(("}" if token == "{" else "]", m.start()))
        elif stack[-1][0] == token:
            ends[stack.pop()[1]] = m.end()
            if not stack:
                return used
        else:
            break  # a mismatched close: the spans still open cannot be JSON
    for _, opener in stack:
        ends[opener] = -1
    return used


def _prose_candidates(text: str) -> Iterator[tuple[str, Any, bool] | str]:
    """Balanced spans in document order, outermost first; parts of a parsed value are skipped.

    Quotes count as JSON strings only from an opening bracket on, so an apostrophe or a stray
    quote in the prose before the JSON does not derail the scan.
    """
    ends: dict[int, int] = {}
    budget, attempts, pos = _TOKEN_BUDGET, 0, 0
    while attempts < _MAX_SPAN_ATTEMPTS:
        m = _OPENER.search(text, pos)
        if m is None:
            return
        start = pos = m.start()
        pos += 1
        if start not in ends:
            if budget <= 0:
                return
            budget -= _scan(text, start, ends, budget)
        end = ends.get(start, -1)
        if end < 0:
            continue
        attempts += 1
        body = text[start:end]
        parsed = _loads(body)
        if isinstance(parsed, str):
            yield parsed
        else:
            pos = end
            yield (body, *parsed)


def extract_json(text: str) -> Extraction:
    """Find the JSON value(s) in a model's answer (see the module docstring for the order).

    Args:
        text: The answer.

    Returns:
        The candidates of the first tier that has any, or none with the first parse error.
    """
    stripped = text.strip().lstrip("\ufeff").strip()
    if not stripped:
        return Extraction(())
    whole = _loads(stripped)
    if not isinstance(whole, str):
        return Extraction((Found(whole[0], "the whole answer", whole[1], len(stripped)),))
    first_error: str | None = None
    for where, source in (
        ("a fenced code block", _fence_candidates(stripped)),
        ("the prose", _prose_candidates(stripped)),
    ):
        found: list[Found] = []
        for item in source:
            if isinstance(item, str):
                first_error = first_error or item
                continue
            body, value, repaired = item
            found.append(Found(value, where, repaired, len(body)))
            if len(found) >= _MAX_CANDIDATES:
                break
        if found:
            return Extraction(tuple(found))
    if stripped[0] in "{[":  # it was meant to be JSON as a whole: that error is the useful one
        first_error = f"the answer does not parse: {whole}"
    return Extraction((), first_error)


def _short(text: str, limit: int = _SNIPPET) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _describe(error: ValidationError, others: int, capped: bool) -> str:
    more = ""
    if others:
        more = f" (and {others}{'+' if capped else ''} other error{'s' if others != 1 else ''})"
    return f"{error.json_path}: {_short(error.message)} (rule: {error.validator}){more}"


_DATA_KEYWORDS = frozenset({"enum", "const", "default", "examples"})  # values, not schemas


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            if key in ("$ref", "$dynamicRef") and isinstance(value, str):
                yield value
            elif key not in _DATA_KEYWORDS:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _has_nested_id(node: Any, root: bool = True) -> bool:
    if isinstance(node, Mapping):
        if not root and isinstance(node.get("$id"), str):
            return True
        return any(_has_nested_id(v, False) for k, v in node.items() if k not in _DATA_KEYWORDS)
    if isinstance(node, list):
        return any(_has_nested_id(v, False) for v in node)
    return False


class JsonSchema:
    """Accept an answer whose JSON matches a JSON Schema; expose the parsed value as ``data``.

    YAML::

        - type: json_schema
          schema: {type: object, required: [name], properties: {name: {type: string}}}
          repair_attempts: 1

    Args:
        config: The validated settings.
        context: Where the evaluator sits (``config_dir`` resolves ``schema_file``).

    Raises:
        ConfigError: the schema file is missing or unreadable, or the schema is invalid or has
            a ``$ref`` that cannot be resolved locally.
    """

    name = "json_schema"
    cost = 0

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        schema_: dict[str, Any] | None = Field(default=None, alias="schema")
        schema_file: str | None = None
        repair_attempts: int = Field(default=0, ge=0)

        @model_validator(mode="after")
        def _one_source(self) -> JsonSchema.Config:
            if (self.schema_ is None) == (self.schema_file is None):
                raise ValueError("give exactly one of 'schema' (inline) or 'schema_file'")
            return self

    def __init__(self, config: Config, context: EvaluatorContext):
        self.config = config
        self.context = context
        self.repair_attempts = config.repair_attempts
        self._key = key = "schema" if config.schema_ is not None else "schema_file"
        schema = config.schema_ if config.schema_ is not None else self._read(context)
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            raise context.error(
                f"invalid JSON Schema at {exc.json_path}: {_short(exc.message)}", key
            ) from exc
        self.schema: dict[str, Any] = schema
        base = schema.get("$id", "") if isinstance(schema.get("$id"), str) else ""
        # An explicit registry also switches off jsonschema's (deprecated) fetching of remote
        # $refs over the network: the default ``Registry`` retrieves nothing.
        registry: Registry[Any] = Registry().with_resource(
            base, DRAFT202012.create_resource(schema)
        )
        self._check_refs(registry, base, key)
        self.validator = Draft202012Validator(
            schema, registry=registry, format_checker=Draft202012Validator.FORMAT_CHECKER
        )

    def _read(self, context: EvaluatorContext) -> dict[str, Any]:
        assert self.config.schema_file is not None
        path = Path(self.config.schema_file).expanduser()
        if not path.is_absolute():
            path = (context.config_dir or Path.cwd()) / path
        try:
            raw = read_capped(path, MAX_SCHEMA_BYTES).decode("utf-8")
        except (ConfigError, UnicodeDecodeError) as exc:
            raise context.error(
                f"cannot read schema file {str(path)!r}: {exc}", "schema_file"
            ) from exc
        try:
            is_json = path.suffix.lower() == ".json"
            loaded = json.loads(raw) if is_json else safe_load_bounded(raw)
        except (ValueError, yaml.YAMLError, RecursionError) as exc:
            raise context.error(
                f"schema file {str(path)!r} is not valid JSON/YAML: {exc}", "schema_file"
            ) from exc
        if not isinstance(loaded, dict):
            raise context.error(
                f"schema file {str(path)!r} must hold a mapping, got {type(loaded).__name__}",
                "schema_file",
            )
        return loaded

    def _check_refs(self, registry: Registry[Any], base: str, key: str) -> None:
        """Resolve every ``$ref`` now, so a typo or a remote reference fails at load time."""
        if _has_nested_id(self.schema):
            return  # nested base URIs change what a ref means; validation will tell
        resolver = registry.resolver(base_uri=base)
        for ref in _refs(self.schema):
            try:
                resolver.lookup(ref)
            except Unresolvable as exc:
                raise self.context.error(
                    f"cannot resolve $ref {ref!r} (only references inside the schema are "
                    "followed; remote ones are never fetched)",
                    key,
                ) from exc

    def __call__(self, request: Request, completion: Completion) -> Verdict:
        """Extract the answer's JSON and validate it.

        Returns:
            Passed with ``data`` set to the parsed value, or failed with the best error's JSON
            path and rule.

        Raises:
            ConfigError: a ``$ref`` could not be resolved while validating.
        """
        extraction = extract_json(completion.text)
        if not extraction.candidates:
            reason = NOT_FOUND
            if extraction.parse_error:
                reason += f"; {_short(extraction.parse_error)}"
            return Verdict(self.name, False, 0.0, reason)
        failures: list[tuple[Found, str]] = []
        for found in extraction.candidates:
            problem = self._validate(found.value)
            if problem is None:
                return Verdict(
                    self.name, True, 1.0, self._how(found, "matches the schema"), data=found.value
                )
            failures.append((found, problem))
        found, problem = max(failures, key=lambda f: f[0].size)
        return Verdict(self.name, False, 0.0, self._how(found, problem))

    def _validate(self, value: Any) -> str | None:
        try:
            errors = list(itertools.islice(self.validator.iter_errors(value), _MAX_ERRORS + 1))
        except RecursionError:
            return "$: the JSON is nested too deeply to validate (rule: depth)"
        except Unresolvable as exc:
            raise self.context.error(
                f"cannot resolve a $ref while validating: {exc}", self._key
            ) from exc
        if not errors:
            return None
        best = best_match(errors)
        assert best is not None
        capped = len(errors) > _MAX_ERRORS
        return _describe(best, min(len(errors), _MAX_ERRORS) - 1 + capped, capped)

    @staticmethod
    def _how(found: Found, what: str) -> str:
        notes = [] if found.where == "the whole answer" else [f"found in {found.where}"]
        if found.repaired:
            notes.append("a trailing comma was tolerated")
        return f"{what} ({'; '.join(notes)})" if notes else what

    def repair_message(self, verdict: Verdict) -> str:
        """The follow-up message asking the model to fix its JSON."""
        return (
            f"Your answer failed the JSON Schema check: {verdict.reason}. "
            "Reply with only the corrected JSON."
        )
