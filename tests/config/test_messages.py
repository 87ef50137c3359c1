"""The config errors users read: plain wording, "did you mean", and every mistake at once."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from cascade import Cascade, ConfigError
from tests.config.test_config import BASE, error_for


def message_for(mutate: Any) -> ConfigError:
    data = copy.deepcopy(BASE)
    mutate(data)
    with pytest.raises(ConfigError) as info:
        Cascade.from_dict(data, ledger=False)
    return info.value


def test_field_validator_error_has_no_pydantic_prefix() -> None:
    """A field validator's message is shown as written, without pydantic's "Value error, "."""
    error = message_for(lambda d: d["providers"]["openai"].update(base_url="localhost:8000"))
    assert error.message.startswith("must be an absolute http:// or https:// URL")
    assert "value error" not in str(error).lower()


def test_model_validator_error_has_no_pydantic_prefix() -> None:
    """A section validator's message is shown as written, without pydantic's "Value error, "."""
    error = message_for(lambda d: d["ledger"].update(url="postgresql://h/db", url_env="DB"))
    assert str(error) == "ledger: set url or url_env, not both"


BAD_LINEAR = {"dense": ["a"], "weights": [1, 2], "mean": [0], "scale": [1]}
BAD_TASK_ROUTER = {"tasks": ["faq", "other"], "hashing": {"buckets": 4},
                   "weights": [[0, 0, 0, 0]], "bias": [0, 0]}


@pytest.mark.parametrize(("where", "mutate", "said"), [
    ("tasks.faq.evaluators[1].model", lambda d: d["tasks"]["faq"]["evaluators"].append(
        {"type": "quality_model", "min": 0.5, "model": BAD_LINEAR}), "same length"),
    ("tasks.faq.router.model", lambda d: d["tasks"]["faq"].update(
        router={"model": {"rungs": {"mini": BAD_LINEAR}}}), "same length"),
    ("task_router.model", lambda d: d.update(task_router={"model": BAD_TASK_ROUTER}),
     "(top level): weights and bias: one entry per task"),
])
def test_model_data_errors_have_no_pydantic_prefix(where: str, mutate: Any, said: str) -> None:
    """A learned model's validator messages (quality model, routers) read without the prefix."""
    error = message_for(mutate)
    assert error.location == where
    assert said in error.message
    assert "value error" not in error.message.lower()


def test_unknown_key_suggests_the_field_it_misspells(tmp_path: Path) -> None:
    """A key within two edits of a field at that place gets a "did you mean"."""
    message = error_for(tmp_path, lambda d: d.update(budget={"daily_usd": 1}))
    assert "budget: unknown key (did you mean 'budgets'?)" in message


def test_nested_unknown_key_suggests_from_its_own_section() -> None:
    """The suggestion comes from the fields of the model at that key path (a rung here)."""
    error = message_for(lambda d: d["tasks"]["faq"]["ladder"].__setitem__(
        0, {"model": "mini", "acept": "any"}))
    assert str(error) == "tasks.faq.ladder[0].acept: unknown key (did you mean 'accept'?)"


def test_unknown_key_far_from_every_field_gets_no_suggestion() -> None:
    """Nothing is suggested for a key more than two edits from every field."""
    error = message_for(lambda d: d["retry"].update(backoff=2))
    assert str(error) == "retry.backoff: unknown key"


def test_evaluator_setting_suggests_the_evaluators_own_field() -> None:
    """min_word in a length evaluator suggests min_words, the evaluator's own setting."""
    error = message_for(lambda d: d["tasks"]["faq"].update(
        evaluators=[{"type": "length", "min_word": 3}]))
    assert str(error) == (
        "tasks.faq.evaluators[0].min_word: unknown key (did you mean 'min_words'?)")


def test_evaluator_common_key_is_suggested() -> None:
    """weigth suggests weight, which every evaluator takes besides its own settings."""
    error = message_for(lambda d: d["tasks"]["faq"]["evaluators"][0].update(weigth=2))
    assert "evaluators[0].weigth: unknown key (did you mean 'weight'?)" in str(error)


def test_did_you_mean_is_bounded_by_two_edits() -> None:
    """Two edits away is a typo; three is another word."""
    from cascade.config.messages import did_you_mean  # here: the module is new, the rest is not

    assert did_you_mean("min_wrds", ["min_words", "max_words"]) == "min_words"
    assert did_you_mean("mn_wrds", ["min_words"]) == "min_words"
    assert did_you_mean("mn_wds", ["min_words"]) is None


@pytest.mark.parametrize("where", ["task", "rung"])
def test_bad_accept_lists_every_form(where: str) -> None:
    """A bad accept: value names all, any and {min_score: X}."""
    def mutate(d: dict[str, Any]) -> None:
        if where == "task":
            d["tasks"]["faq"]["accept"] = "most"
        else:
            d["tasks"]["faq"]["ladder"][0] = {"model": "mini", "accept": "most"}
    error = message_for(mutate)
    assert error.message == "must be all, any or {min_score: X} (got 'most')"


def test_accept_mapping_mistakes_are_the_min_score_forms() -> None:
    """A misspelt {min_score: X} is explained as that form, not as "should be 'all' or 'any'"."""
    error = message_for(lambda d: d["tasks"]["faq"].update(accept={"min_scor": 0.5}))
    assert str(error) == (
        "tasks.faq.accept.min_score: required key is missing; "
        "tasks.faq.accept.min_scor: unknown key (did you mean 'min_score'?)")


def test_schema_mistakes_side_by_side_are_all_named() -> None:
    """Two wrong values in one section, and mistakes in two rungs, are each named."""
    def mutate(d: dict[str, Any]) -> None:
        d["models"]["mini"]["price"].update(input="cheap", output="free")
        d["tasks"]["faq"]["ladder"] = [{"model": "mini", "accept": "most"},
                                       {"model": "sonnet", "acept": "all"}]
    message = str(message_for(mutate))
    for where in ("models.mini.price.input", "models.mini.price.output",
                  "tasks.faq.ladder[0].accept", "tasks.faq.ladder[1].acept"):
        assert f"{where}: " in message


def test_schema_and_reference_mistakes_are_named_together(tmp_path: Path) -> None:
    """An unknown key and an undefined model or provider are named in one error."""
    def mutate(d: dict[str, Any]) -> None:
        d["tasks"]["faq"]["ladders"] = ["mini"]
        d["tasks"]["faq"]["ladder"][1] = "sonet"
        d["models"]["mini"]["provider"] = "openia"
    message = error_for(tmp_path, mutate)
    assert "tasks.faq.ladders: unknown key" in message
    assert "tasks.faq.ladder[1]: unknown model 'sonet'" in message
    assert "models.mini.provider: unknown provider 'openia'" in message


def test_every_evaluator_mistake_of_every_task_is_named() -> None:
    """Evaluator mistakes in two tasks and two rungs are named in one error, each once."""
    def mutate(d: dict[str, Any]) -> None:
        d["tasks"]["faq"]["evaluators"] = [{"type": "length", "min_word": 3},
                                           {"type": "lenght"}]
        d["tasks"]["other"] = {
            "ladder": [{"model": "mini", "evaluators": [{"type": "regex", "pattern": "("}]},
                       "sonnet"],
            "evaluators": [{"type": "length", "max_words": -1}]}
    error = message_for(mutate)
    message = str(error)
    for where in ("tasks.faq.evaluators[0].min_word", "tasks.faq.evaluators[1].type",
                  "tasks.other.ladder[0].evaluators[0].pattern",
                  "tasks.other.evaluators[0].max_words"):
        assert message.count(f"{where}: ") == 1, where
    assert error.location == "tasks.faq.evaluators[0].min_word"


def test_references_are_read_safely_from_an_invalid_file() -> None:
    """A number as a key is a schema mistake; references around it are still checked."""
    def mutate(d: dict[str, Any]) -> None:
        d["providers"][1] = d["providers"].pop("anthropic")
    message = str(message_for(mutate))
    assert "providers[1]: input should be a valid string (got 1)" in message
    assert "models.sonnet.provider: unknown provider 'anthropic' (defined: openai, 1)" in message


def test_capitalised_names_stay_in_the_key_path() -> None:
    """A task the user named FAQ is kept in the path: only pydantic's union names are dropped."""
    error = message_for(lambda d: d["tasks"].update(FAQ={"ladder": ["mini"], "ladders": 1}))
    assert str(error) == "tasks.FAQ.ladders: unknown key"
