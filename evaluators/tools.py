"""``tool_call``: a function call must name an offered tool and match that tool's JSON schema.

A model that calls a tool that does not exist, or passes arguments its schema refuses, makes
the caller's agent loop fail one step later; escalating to a stronger rung is cheaper.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

import jsonschema
from jsonschema import Draft202012Validator
from pydantic import BaseModel, ConfigDict

from cascade.evaluation import EvaluatorContext
from cascade.types import Completion, Request, ToolCall, Verdict

__all__ = ["ToolCallCheck"]


class ToolCallCheck:
    """Check every tool call of an answer against the tools the request offered.

    The tools are the call's ``tools=`` (OpenAI's shape), or ``tools:`` in the evaluator's
    settings for tasks that offer a fixed set. A call fails when its function is not offered,
    when ``tool_choice`` names another function (or is ``none``), when its arguments are not a
    JSON object, or when they do not validate against the function's ``parameters`` schema.
    A text answer passes unless ``tool_choice`` is ``required`` or names a function, or
    ``require: true``.

    YAML::

        - {type: tool_call}
        - {type: tool_call, require: true}
    """

    name = "tool_call"
    cost = 0
    judges_tool_calls = True  # the engine shows it answers that carry tool calls

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        require: bool = False  # a text answer (no tool call) fails
        tools: list[dict[str, Any]] | None = None  # tools offered, when calls do not pass them

    def __init__(self, config: Config, context: EvaluatorContext | None = None):
        self.config = config
        for tool in config.tools or ():
            schema = _function(tool).get("parameters")
            if schema is not None:
                Draft202012Validator.check_schema(schema)

    def __call__(self, request: Request, completion: Completion) -> Verdict:
        offered = self.config.tools or request.params.get("tools") or []
        functions = {str(_function(t).get("name")): _function(t) for t in offered}
        choice = request.params.get("tool_choice")
        forced = _forced_name(choice)
        calls = completion.tool_calls
        if not calls:
            if choice == "required" or forced or self.config.require:
                wanted = f"a call to {forced!r}" if forced else "a tool call"
                return Verdict(self.name, False, 0.0, f"a text answer where {wanted} is required")
            return Verdict(self.name, True, 1.0, "a text answer (no tool call)")
        if choice == "none":
            return Verdict(self.name, False, 0.0, "called a tool although tool_choice is none")
        if request.params.get("parallel_tool_calls") is False and len(calls) > 1:
            return Verdict(
                self.name, False, 0.0, f"{len(calls)} calls although parallel_tool_calls is false"
            )
        problems = [p for call in calls if (p := _problem(call, functions, forced))]
        if problems:
            return Verdict(self.name, False, 0.0, "; ".join(problems))
        names = ", ".join(c.name for c in calls)
        return Verdict(self.name, True, 1.0, f"{len(calls)} valid tool call(s): {names}")


def _function(tool: Mapping[str, Any]) -> Mapping[str, Any]:
    inner = tool.get("function")
    return inner if isinstance(inner, Mapping) else tool


def _forced_name(choice: Any) -> str | None:
    if isinstance(choice, Mapping):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, Mapping) else choice.get("name")
        return str(name) if name else None
    return None


def _problem(call: ToolCall, functions: Mapping[str, Mapping[str, Any]], forced: str | None) -> str:
    if call.name not in functions:
        known = ", ".join(sorted(functions)) or "none"
        return f"{call.name!r} is not an offered tool (offered: {known})"
    if forced and call.name != forced:
        return f"called {call.name!r} although tool_choice requires {forced!r}"
    try:
        arguments = json.loads(call.arguments or "{}")
    except ValueError as exc:
        return f"{call.name}: arguments are not valid JSON ({exc})"
    if not isinstance(arguments, dict):
        return f"{call.name}: arguments are {type(arguments).__name__}, not a JSON object"
    schema = functions[call.name].get("parameters")
    if not schema:
        return ""
    validator = _validator(json.dumps(schema, sort_keys=True))
    if isinstance(validator, str):
        return f"{call.name}: the tool's parameters schema is invalid ({validator})"
    errors = sorted(validator.iter_errors(arguments), key=lambda e: list(e.absolute_path))
    if not errors:
        return ""
    shown = "; ".join(_describe(e) for e in errors[:5])
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return f"{call.name}: arguments do not match its schema: {shown}{more}"


def _describe(error: jsonschema.ValidationError) -> str:
    where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
    return f"{where}: {error.message}"


@functools.lru_cache(maxsize=256)
def _validator(schema_json: str) -> Draft202012Validator | str:
    schema = json.loads(schema_json)
    try:
        Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        return exc.message
    return Draft202012Validator(schema)
