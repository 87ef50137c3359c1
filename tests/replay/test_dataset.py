from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cascade.errors import CascadeError
from cascade.providers.dataset import (
    DatasetError,
    RecordedResponse,
    ReplayMessage,
    ReplayRecord,
    iter_dataset,
    load_dataset,
    write_dataset,
)


def _record(i: int = 0, **overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": f"q-{i}",
        "task": "math",
        "messages": [{"role": "user", "content": f"question {i}"}],
        "responses": {
            "small": {
                "text": "4",
                "input_tokens": 10,
                "output_tokens": 1,
                "cost_usd": 1e-06,
                "latency_ms": 120.5,
                "logprob": -0.3,
                "score": 0.0,
            },
            "gpt-4": {"text": "5", "score": 1},
        },
    }
    record.update(overrides)
    return record


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _error_for(tmp_path: Path, bad_line: str) -> str:
    """Put ``bad_line`` on line 3 after a good line and a blank line; return the error text."""
    path = _write_lines(tmp_path / "data.jsonl", [json.dumps(_record(0)), "", bad_line])
    with pytest.raises(DatasetError) as info:
        load_dataset(path)
    return str(info.value)


def test_round_trip(tmp_path: Path) -> None:
    """write_dataset then load_dataset gives back equal records."""
    records = [ReplayRecord.model_validate(_record(i)) for i in range(3)]
    records.append(
        ReplayRecord(
            id="bare",
            messages=(ReplayMessage(role="user", content="héllo ✓"),),
            responses={"m": RecordedResponse(text="", score=0.5)},
            meta={"split": "test", "n": [1]},
        )
    )
    path = tmp_path / "out.jsonl"
    assert write_dataset(path, records) == 4
    assert load_dataset(path) == records


def test_round_trip_gzip(tmp_path: Path) -> None:
    """A .jsonl.gz path is written and read compressed."""
    records = [ReplayRecord.model_validate(_record(i)) for i in range(2)]
    path = tmp_path / "out.jsonl.gz"
    write_dataset(path, records)
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    assert load_dataset(path) == records


def test_written_lines_are_compact_and_omit_defaults(tmp_path: Path) -> None:
    """Each line is compact JSON without None fields or an empty meta."""
    record = ReplayRecord.model_validate(_record(0, task=None))
    path = tmp_path / "out.jsonl"
    write_dataset(path, [record])
    line = path.read_text(encoding="utf-8").splitlines()[0]
    assert ": " not in line
    assert ", " not in line
    assert "null" not in line
    assert json.loads(line) == {
        "id": "q-0",
        "messages": [{"role": "user", "content": "question 0"}],
        "responses": {
            "small": {
                "text": "4",
                "input_tokens": 10,
                "output_tokens": 1,
                "cost_usd": 1e-06,
                "latency_ms": 120.5,
                "logprob": -0.3,
                "score": 0.0,
            },
            "gpt-4": {"text": "5", "score": 1.0},
        },
    }


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    """Empty and whitespace-only lines are ignored."""
    lines = ["", json.dumps(_record(0)), "   ", json.dumps(_record(1)), ""]
    path = _write_lines(tmp_path / "d.jsonl", lines)
    assert [r.id for r in iter_dataset(path)] == ["q-0", "q-1"]


def test_iter_dataset_is_lazy(tmp_path: Path) -> None:
    """Records before a bad line are yielded before the error is raised."""
    path = _write_lines(tmp_path / "d.jsonl", [json.dumps(_record(0)), "{oops"])
    it = iter_dataset(path)
    assert next(it).id == "q-0"
    with pytest.raises(DatasetError, match=r"d\.jsonl:2: "):
        next(it)


def test_bad_json_names_line(tmp_path: Path) -> None:
    """A line that is not JSON is reported with its line number."""
    message = _error_for(tmp_path, '{"id": "q-1", ')
    assert message.startswith(f"{tmp_path / 'data.jsonl'}:3: invalid JSON")


def test_not_an_object_names_line(tmp_path: Path) -> None:
    """A JSON value that is not an object is rejected."""
    assert ":3: Input should be an object" in _error_for(tmp_path, "[1, 2]")


def test_score_above_one_names_field(tmp_path: Path) -> None:
    """A score above 1 names the model and field."""
    bad = _record(1)
    bad["responses"]["gpt-4"]["score"] = 1.5
    assert _error_for(tmp_path, json.dumps(bad)).endswith(":3: responses.gpt-4.score: must be <= 1")


def test_score_below_zero_names_field(tmp_path: Path) -> None:
    """A negative score is rejected."""
    bad = _record(1)
    bad["responses"]["small"]["score"] = -0.1
    assert _error_for(tmp_path, json.dumps(bad)).endswith(":3: responses.small.score: must be >= 0")


def test_nan_score_is_rejected(tmp_path: Path) -> None:
    """NaN (which Python's json writes) is not a valid score."""
    bad = json.dumps(_record(1)).replace('"score": 1', '"score": NaN')
    assert ":3: " in _error_for(tmp_path, bad)


def test_missing_score_is_rejected(tmp_path: Path) -> None:
    """score is required on every response."""
    bad = _record(1)
    del bad["responses"]["gpt-4"]["score"]
    assert _error_for(tmp_path, json.dumps(bad)).endswith(
        ":3: responses.gpt-4.score: required field is missing"
    )


def test_missing_text_is_rejected(tmp_path: Path) -> None:
    """text is required on every response."""
    bad = _record(1)
    del bad["responses"]["small"]["text"]
    assert _error_for(tmp_path, json.dumps(bad)).endswith(
        ":3: responses.small.text: required field is missing"
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [("input_tokens", "10"), ("output_tokens", 1.0), ("cost_usd", "0.1"), ("text", 5)],
)
def test_wrong_type_is_rejected(tmp_path: Path, field: str, value: object) -> None:
    """Values are not coerced: a string token count or a float one is an error."""
    bad = _record(1)
    bad["responses"]["small"][field] = value
    assert f":3: responses.small.{field}: " in _error_for(tmp_path, json.dumps(bad))


def test_bad_message_names_index(tmp_path: Path) -> None:
    """A bad message role points at the message by index."""
    bad = _record(1, messages=[{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}])
    assert ":3: messages[1].role: " in _error_for(tmp_path, json.dumps(bad))


def test_unknown_field_is_rejected(tmp_path: Path) -> None:
    """A typo in a field name is an error, not silently ignored."""
    bad = _record(1)
    bad["responses"]["small"]["scores"] = 1.0
    message = _error_for(tmp_path, json.dumps(bad))
    assert message.endswith(":3: responses.small.scores: unknown field")


def test_empty_responses_are_rejected(tmp_path: Path) -> None:
    """A record needs at least one response."""
    assert _error_for(tmp_path, json.dumps(_record(1, responses={}))).endswith(
        ":3: responses: must not be empty"
    )


def test_duplicate_id_names_both_lines(tmp_path: Path) -> None:
    """A repeated id names the line it first appeared on."""
    message = _error_for(tmp_path, json.dumps(_record(0)))
    assert message.endswith(":3: id: duplicate 'q-0' (first on line 1)")


def test_missing_file_is_a_dataset_error(tmp_path: Path) -> None:
    """A file that does not exist raises DatasetError naming it."""
    path = tmp_path / "nope.jsonl"
    with pytest.raises(DatasetError, match=r"nope\.jsonl"):
        load_dataset(path)


def test_dataset_error_is_a_value_error() -> None:
    """DatasetError fits both the package's tree and ValueError handlers."""
    assert issubclass(DatasetError, ValueError)
    assert issubclass(DatasetError, CascadeError)


def test_write_rejects_duplicate_ids_and_leaves_no_file(tmp_path: Path) -> None:
    """Writing two records with one id fails and leaves neither the target nor a temp file."""
    record = ReplayRecord.model_validate(_record(0))
    path = tmp_path / "out.jsonl"
    with pytest.raises(DatasetError, match="duplicate id 'q-0'"):
        write_dataset(path, [record, record])
    assert list(tmp_path.iterdir()) == []


def test_records_are_frozen() -> None:
    """Records cannot be mutated after validation."""
    record = ReplayRecord.model_validate(_record(0))
    with pytest.raises(ValueError, match="frozen"):
        record.id = "other"
