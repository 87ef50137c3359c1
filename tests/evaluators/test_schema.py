"""json_schema: JSON extraction from messy answers, validation reasons, schema files, repair."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from cascade import Cascade, ConfigError, Request, Verdict
from cascade.evaluation import EvaluatorContext, Slot, build_one
from cascade.testing import FakeProvider, make_completion
from evaluators.schema import NOT_FOUND, JsonSchema, extract_json
from tests.evaluators.work import cpu_watchdog, python_lines

CTX = EvaluatorContext(location="tasks.t.evaluators[0]", task="t", model="small",
                       provider_type="openai", supports_logprobs=False)
ORDER = {
    "type": "object",
    "required": ["name", "items"],
    "properties": {
        "name": {"type": "string"},
        "items": {"type": "array", "items": {
            "type": "object", "required": ["price"],
            "properties": {"price": {"type": "number"}}}},
    },
}
GOOD = {"name": "Zoë", "items": [{"price": 1.5}, {"price": 2}]}
REQUEST = Request(task="t", messages=({"role": "user", "content": "Give me the order as JSON"},))


def build(ctx: EvaluatorContext = CTX, **settings: Any) -> Slot:
    settings.setdefault("schema", ORDER)
    return build_one({"type": "json_schema", **settings}, ctx)


def check(text: str, **settings: Any) -> Verdict:
    return build(**settings).run(REQUEST, make_completion(text))


def config(evaluators: list[Any]) -> dict[str, Any]:
    return {
        "providers": {"p": {"type": "openai"}},
        "models": {k: {"provider": "p", "name": k, "price": {"input": 1, "output": 2}}
                   for k in ("small", "big")},
        "tasks": {"t": {"ladder": ["small", "big"], "evaluators": evaluators}},
    }


# -- verdicts -------------------------------------------------------------------------------------


def test_valid_json_passes_with_parsed_data() -> None:
    """A whole-answer JSON object that matches passes with score 1 and the parsed object."""
    verdict = check(json.dumps(GOOD))
    assert (verdict.passed, verdict.score, verdict.data) == (True, 1.0, GOOD)
    assert verdict.evaluator == "json_schema"


def test_engine_exposes_parsed_object_as_result_json() -> None:
    """Through the engine, the accepted answer's parsed object is ``result.json``."""
    fake = FakeProvider("p", {"small": ["not json"], "big": [f"Sure:\n{json.dumps(GOOD)}"]})
    cascade = Cascade.from_dict(config([{"type": "json_schema", "schema": ORDER}]),
                                providers={"p": fake}, ledger=False)
    result = cascade.complete("t", "order?")
    assert (result.model, result.json) == ("big", GOOD)
    assert result.steps[0].verdicts[0].reason == NOT_FOUND


def test_type_error_names_json_path_and_rule() -> None:
    """The reason names the failing JSON path, the message and the rule."""
    bad = {"name": "x", "items": [{"price": 1}, {"price": 2}, {"price": "abc"}]}
    verdict = check(json.dumps(bad))
    assert (verdict.passed, verdict.score, verdict.data) == (False, 0.0, None)
    assert verdict.reason == "$.items[2].price: 'abc' is not of type 'number' (rule: type)"


def test_reason_counts_the_other_errors() -> None:
    """The best error is reported with the number of the other errors."""
    verdict = check(json.dumps({"name": 5, "items": [{"price": "a"}, {}]}))
    assert verdict.reason.endswith("(and 2 other errors)")


def test_missing_required_property() -> None:
    """A missing required key is reported at its parent with the ``required`` rule."""
    verdict = check('{"name": "x"}')
    assert verdict.reason == "$: 'items' is a required property (rule: required)"


def test_format_is_checked() -> None:
    """Cheap formats such as ``email`` are enforced, not just annotations."""
    schema = {"type": "object", "properties": {"mail": {"type": "string", "format": "email"}}}
    verdict = check('{"mail": "not-an-address"}', schema=schema)
    assert not verdict.passed
    assert "(rule: format)" in verdict.reason


def test_scalar_answer_is_validated_as_is() -> None:
    """A bare JSON scalar is a JSON value too, validated against the schema."""
    assert check("42", schema={"type": "integer"}).data == 42
    assert "is not of type 'object'" in check("42").reason


def test_local_ref_is_followed() -> None:
    """``$ref`` into ``$defs`` works."""
    schema = {"$defs": {"price": {"type": "number"}},
              "properties": {"p": {"$ref": "#/$defs/price"}}}
    assert check('{"p": 3}', schema=schema).passed
    assert "(rule: type)" in check('{"p": "x"}', schema=schema).reason


# -- where the JSON is ----------------------------------------------------------------------------


def test_json_inside_prose() -> None:
    """JSON surrounded by prose is found."""
    verdict = check(f"Here is the order you asked for: {json.dumps(GOOD)} Let me know!")
    assert verdict.data == GOOD
    assert "found in the prose" in verdict.reason


def test_json_fenced_block() -> None:
    """A ```json fenced block is found."""
    verdict = check(f"Here:\n```json\n{json.dumps(GOOD, indent=2)}\n```\nDone.")
    assert verdict.data == GOOD
    assert "found in a fenced code block" in verdict.reason


def test_plain_fenced_block() -> None:
    """An untagged ``` block (and a ~~~ one) is found."""
    assert check(f"```\n{json.dumps(GOOD)}\n```").data == GOOD
    assert check(f"~~~\n{json.dumps(GOOD)}\n~~~").data == GOOD


def test_first_fenced_block_that_parses_wins() -> None:
    """A block that does not parse is skipped for a later one that does."""
    text = f"```json\n{{oops}}\n```\nfixed:\n```json\n{json.dumps(GOOD)}\n```"
    assert check(text).data == GOOD


def test_json_tagged_block_preferred_over_untagged() -> None:
    """A ```json block wins over an earlier untagged block that happens to parse."""
    text = f"```\n[1, 2]\n```\n```json\n{json.dumps(GOOD)}\n```"
    assert extract_json(text).candidates[0].value == GOOD


def test_nested_fences() -> None:
    """A ```json block inside a ````markdown block is found."""
    text = f"````markdown\nExample:\n```json\n{json.dumps(GOOD)}\n```\n````"
    assert check(text).data == GOOD


def test_unclosed_fence_of_a_truncated_answer() -> None:
    """A fence that never closes runs to the end of the answer."""
    assert check(f"```json\n{json.dumps(GOOD)}\n").data == GOOD


def test_inline_fence_falls_back_to_prose() -> None:
    """```json {...}``` on one line is not a fence but the object is still found."""
    assert check(f"```json {json.dumps(GOOD)}```").data == GOOD


def test_trailing_comma_tolerated_and_noted() -> None:
    """A trailing comma is accepted with the parsed value, and the reason says so."""
    verdict = check('{"name": "x", "items": [{"price": 1,},],}')
    assert verdict.data == {"name": "x", "items": [{"price": 1}]}
    assert "a trailing comma was tolerated" in verdict.reason


def test_trailing_comma_repair_leaves_strings_alone() -> None:
    """Commas inside string values, even before a brace, are not touched."""
    verdict = check('{"name": "a,}b, ]", "items": [],}')
    assert verdict.data == {"name": "a,}b, ]", "items": []}


def test_braces_inside_string_values() -> None:
    """A '}' inside quotes does not end the object early."""
    text = 'Result: {"name": "use } and { freely", "items": []} -- done {not json}'
    assert check(text).data == {"name": "use } and { freely", "items": []}


def test_escaped_quote_before_brace_in_string() -> None:
    """An escaped quote inside a string does not end the string."""
    text = 'Answer {"name": "say \\"}\\" loudly", "items": []} end'
    assert check(text).data == {"name": 'say "}" loudly', "items": []}


def test_quote_in_prose_before_json() -> None:
    """Apostrophes and stray quotes in the prose do not derail the scan."""
    text = 'It\'s 5" long, he said "hi {" then: {"name": "x", "items": []}'
    assert check(text).data == {"name": "x", "items": []}


def test_citation_brackets_before_the_object() -> None:
    """A '[1]' citation that parses as JSON does not hide the real object."""
    verdict = check(f"As noted in [1], the order is {json.dumps(GOOD)}.")
    assert verdict.data == GOOD


def test_failure_reports_the_longest_candidate() -> None:
    """When no candidate matches, the reason is about the longest one, not a '[1]' citation."""
    verdict = check('See [1]. The order: {"name": 7, "items": []}')
    assert verdict.reason.startswith("$.name: 7 is not of type 'string'")


# -- adversarial answers --------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   \n\t  ", "Sorry, I have no data.", "\ufeff"])
def test_no_json_fails_with_reason(text: str) -> None:
    """Empty, whitespace-only and JSON-free answers fail with the fixed reason."""
    verdict = check(text)
    assert (verdict.passed, verdict.score, verdict.reason) == (False, 0.0, NOT_FOUND)


def test_malformed_json_reports_the_parse_error() -> None:
    """An answer that is broken JSON says where it broke."""
    verdict = check('{"name": "x", "items": [')
    assert verdict.reason.startswith(NOT_FOUND + "; the answer does not parse:")


def test_broken_fenced_block_reports_the_parse_error() -> None:
    """A ```json block that does not parse is named in the reason."""
    verdict = check("```json\n{'name': 'x'}\n```")
    assert verdict.reason.startswith(NOT_FOUND + "; a fenced block (json) does not parse")


@pytest.mark.parametrize("text", [
    "[" * 5000 + "]" * 5000,
    "[" * 600 + "]" * 600,
    '{"a": ' + "1" * 5000 + "}",
    '{"' * 2000,
])
def test_pathological_json_fails_without_crashing(text: str) -> None:
    """Deep nesting, huge integers and unterminated strings are rejections, not crashes."""
    verdict = check(text, schema={})
    assert isinstance(verdict, Verdict)


def huge(kind: str, size: int) -> str:
    """An answer of about ``size`` characters in one of the shapes that stress the search."""
    items = [{"price": i} for i in range(10)]
    return {
        "prose": lambda: "word " * (size // 5) + json.dumps(GOOD),
        "object": lambda: json.dumps({"name": "x" * size, "items": items}),
        "nested": lambda: "[" * (size // 2) + "]" * (size // 2),
        "brackets": lambda: "[1]" * (size // 3),
        "strings": lambda: '{"' * (size // 2),
        "fences": lambda: "```json\n{bad,}\n```\n" * (size // 19),
        "unterminated": lambda: '{"' + "x" * size,  # a string that never closes
    }[kind]()


KINDS = ["prose", "object", "nested", "brackets", "strings", "fences", "unterminated"]


@pytest.mark.parametrize("kind", KINDS)
def test_huge_answer_work_is_bounded(kind: str) -> None:
    """A 1 MB answer of any shape is judged, and doubling it to 2 MB at most doubles the Python
    work: the search's caps (token budget, span attempts, candidates, blocks) keep it linear or
    flat. Counted in lines of Python; C regexes are under a CPU-time watchdog. Timed in
    benchmarks/evaluator_speed.py."""
    check("{}")  # the plug-in and the validator are built once, not per answer
    with cpu_watchdog():
        verdict, work = python_lines(lambda: check(huge(kind, 1_000_000)))
        _, doubled = python_lines(lambda: check(huge(kind, 2_000_000)))
    assert verdict.passed == (kind in ("prose", "object"))
    assert doubled <= 2 * work, (work, doubled)


# -- config ---------------------------------------------------------------------------------------


def test_schema_and_schema_file_are_exclusive(tmp_path: Path) -> None:
    """Giving both sources is a ConfigError at the evaluator."""
    with pytest.raises(ConfigError, match="exactly one of") as info:
        build(schema_file=str(tmp_path / "s.json"))
    assert info.value.location == "tasks.t.evaluators[0]"


def test_schema_or_schema_file_required() -> None:
    """Giving neither source is a ConfigError."""
    with pytest.raises(ConfigError, match="exactly one of"):
        build_one({"type": "json_schema"}, CTX)


def test_unknown_key_is_rejected_with_its_path() -> None:
    """A typo in a setting names the key."""
    with pytest.raises(ConfigError, match="unknown key") as info:
        build(repiar_attempts=1)
    assert info.value.location == "tasks.t.evaluators[0].repiar_attempts"


def test_negative_repair_attempts_rejected() -> None:
    """repair_attempts must be >= 0."""
    with pytest.raises(ConfigError) as info:
        build(repair_attempts=-1)
    assert info.value.location == "tasks.t.evaluators[0].repair_attempts"


def test_invalid_schema_is_a_config_error() -> None:
    """A schema that is not valid JSON Schema fails at load, naming ``schema``."""
    with pytest.raises(ConfigError, match=r"invalid JSON Schema at \$.type") as info:
        build(schema={"type": "nope"})
    assert info.value.location == "tasks.t.evaluators[0].schema"


def test_unresolvable_ref_fails_at_load() -> None:
    """A ``$ref`` to nowhere is caught when the config loads."""
    with pytest.raises(ConfigError, match="cannot resolve") as info:
        build(schema={"$ref": "#/$defs/Missing"})
    assert info.value.location == "tasks.t.evaluators[0].schema"


def test_remote_ref_is_never_fetched(monkeypatch: pytest.MonkeyPatch) -> None:
    """A remote ``$ref`` is a load-time ConfigError and no request is made."""
    def no_network(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("network access")
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(ConfigError, match="remote ones are never fetched"):
        build(schema={"$ref": "https://example.com/order.schema.json"})


def test_schema_file_relative_to_config_dir(tmp_path: Path) -> None:
    """A relative schema_file resolves against the config file's directory."""
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "order.json").write_text(json.dumps(ORDER))
    ctx = EvaluatorContext(location=CTX.location, task="t", model="small",
                           provider_type="openai", supports_logprobs=False, config_dir=tmp_path)
    slot = build_one({"type": "json_schema", "schema_file": "schemas/order.json"}, ctx)
    assert "(rule: type)" in slot.run(REQUEST, make_completion('{"name": 1, "items": []}')).reason


def test_schema_file_relative_to_cwd_without_config_dir(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a config file, a relative schema_file resolves against the working directory."""
    (tmp_path / "order.yaml").write_text("type: object\nrequired: [name]\n")
    monkeypatch.chdir(tmp_path)
    slot = build_one({"type": "json_schema", "schema_file": "order.yaml"}, CTX)
    assert slot.run(REQUEST, make_completion('{"name": 1}')).passed
    assert not slot.run(REQUEST, make_completion("{}")).passed


def test_schema_file_through_from_yaml(tmp_path: Path) -> None:
    """End to end: a YAML config next to its schema file loads and validates."""
    (tmp_path / "order.json").write_text(json.dumps(ORDER))
    cfg = config([{"type": "json_schema", "schema_file": "order.json"}])
    (tmp_path / "cascade.yaml").write_text(json.dumps(cfg))  # JSON is valid YAML
    fake = FakeProvider("p", {"small": [json.dumps(GOOD)], "big": ["x"]})
    cascade = Cascade.from_yaml(tmp_path / "cascade.yaml", providers={"p": fake}, ledger=False)
    assert cascade.complete("t", "order?").json == GOOD


@pytest.mark.parametrize(("content", "message"), [
    (None, "cannot read schema file"),
    ("{not json", "is not valid JSON/YAML"),
    ("[1, 2]", "must hold a mapping"),
    ('{"type": 5}', "invalid JSON Schema"),
])
def test_bad_schema_file_is_a_config_error(tmp_path: Path, content: str | None,
                                           message: str) -> None:
    """A missing, unparsable, non-mapping or invalid schema file names ``schema_file``."""
    path = tmp_path / "s.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message) as info:
        build_one({"type": "json_schema", "schema_file": str(path)}, CTX)
    assert info.value.location == "tasks.t.evaluators[0].schema_file"


# -- repair ---------------------------------------------------------------------------------------


def test_repair_message_states_the_problem() -> None:
    """The repair message carries the validation problem and asks for bare JSON."""
    evaluator = JsonSchema(JsonSchema.Config.model_validate({"schema": ORDER,
                                                            "repair_attempts": 2}), CTX)
    verdict = evaluator(REQUEST, make_completion('{"name": "x", "items": [{"price": "1"}]}'))
    message = evaluator.repair_message(verdict)
    assert evaluator.repair_attempts == 2
    assert "$.items[0].price: '1' is not of type 'number'" in message
    assert message.endswith("Reply with only the corrected JSON.")


def test_engine_repairs_then_accepts() -> None:
    """With repair_attempts, the same model is re-asked with the problem and can fix it."""
    fake = FakeProvider("p", {"small": ['{"name": 1}', json.dumps(GOOD)], "big": ["x"]})
    cfg = config([{"type": "json_schema", "schema": ORDER, "repair_attempts": 1}])
    result = Cascade.from_dict(cfg, providers={"p": fake}, ledger=False).complete("t", "order?")
    assert [s.decision for s in result.steps] == ["repair", "accept"]
    assert (result.model, result.json) == ("small", GOOD)
    retry = fake.calls[1]["messages"]
    assert retry[-2] == {"role": "assistant", "content": '{"name": 1}'}
    assert "Reply with only the corrected JSON." in retry[-1]["content"]
