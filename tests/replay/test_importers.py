from __future__ import annotations

import functools
import http.server
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cascade.errors import DatasetError
from cascade.providers.dataset import ReplayRecord, load_dataset
from cascade.replay.importers import IMPORTERS, PRICES, ImportSummary, import_dataset
from cascade.replay.importers.base import seeded_split
from cascade.replay.importers.routerbench import _unlist

# The datasets are not redistributable, so they live next to the repository, never in it.
DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SOURCES = {
    "routellm-gsm8k": DATA / "routellm",
    "routerbench": DATA / "routerbench-subset",
    "alpacaeval": DATA / "alpacaeval-subset",
}
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} not present")

Imported = tuple[ImportSummary, list[ReplayRecord], list[str]]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Imported]:
    """Import (name, split, seed) once per module; returns summary, records and said lines."""
    cache: dict[tuple[str, str, int], Imported] = {}

    def _run(name: str, split: str = "all", seed: int = 0) -> Imported:
        key = (name, split, seed)
        if key not in cache:
            said: list[str] = []
            out = tmp_path_factory.mktemp("imports") / f"{name}-{split}-{seed}.jsonl"
            summary = import_dataset(
                name, SOURCES[name], out, split=split, seed=seed, say=said.append
            )
            cache[key] = (summary, load_dataset(out), said)
        return cache[key]

    return _run


def _mean_scores(records: list[ReplayRecord], task: str | None = None) -> dict[str, float]:
    scores: dict[str, list[float]] = defaultdict(list)
    for record in records:
        if task is None or record.task == task:
            for model, response in record.responses.items():
                scores[model].append(response.score)
    return {m: sum(s) / len(s) for m, s in scores.items()}


# --- GSM8K -------------------------------------------------------------------------------


@needs_data
def test_gsm8k_drops_the_12_contaminated_prompts(run: Callable[..., Imported]) -> None:
    """1,319 rows minus 12 contaminated ones, which are counted as skipped."""
    summary, records, _ = run("routellm-gsm8k")
    assert (summary.records, summary.skipped) == (1307, 12)
    ids = {r.id for r in records}
    assert len(ids) == 1307
    assert {"gsm8k-0", "gsm8k-1", "gsm8k-2", "gsm8k-18", "gsm8k-932"}.isdisjoint(ids)
    assert "gsm8k-3" in ids


@needs_data
def test_gsm8k_scores_match_source_accuracy(run: Callable[..., Imported]) -> None:
    """Mean score is the published accuracy (0.638 / 0.857), shifted < 0.01 by decontamination."""
    summary, records, _ = run("routellm-gsm8k")
    means = _mean_scores(records)
    assert summary.models == ("mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview")
    assert means["mistralai/Mixtral-8x7B-Instruct-v0.1"] == pytest.approx(0.638, abs=0.01)
    assert means["gpt-4-1106-preview"] == pytest.approx(0.857, abs=0.01)
    assert {r.task for r in records} == {"math"}


@needs_data
def test_gsm8k_costs_follow_estimated_tokens(run: Callable[..., Imported]) -> None:
    """Tokens are ceil(chars/4) and cost uses the dataset's prices, GPT-4 about 100x Mixtral."""
    _, records, _ = run("routellm-gsm8k")
    record = records[0]
    gpt4 = record.responses["gpt-4-1106-preview"]
    assert gpt4.input_tokens == -(-len(record.messages[0].content) // 4)
    assert gpt4.output_tokens == -(-len(gpt4.text) // 4)
    price_in, price_out = PRICES["routellm-gsm8k"]["gpt-4-1106-preview"]
    expected = (gpt4.input_tokens * price_in + gpt4.output_tokens * price_out) / 1e6
    assert gpt4.cost_usd == pytest.approx(expected)
    models = PRICES["routellm-gsm8k"]
    total = {m: sum(r.responses[m].cost_usd or 0 for r in records) for m in models}
    ratio = total["gpt-4-1106-preview"] / total["mistralai/Mixtral-8x7B-Instruct-v0.1"]
    assert 50 < ratio < 200


# --- RouterBench ---------------------------------------------------------------------------


@needs_data
def test_routerbench_counts_per_task_and_split(run: Callable[..., Imported]) -> None:
    """Given splits, with the 28 unscored ARC rows (14 split sample_ids) dropped."""
    summary, records, _ = run("routerbench")
    counts = Counter((r.task, r.meta["split"]) for r in records)
    assert counts == {
        ("arc", "train"): 1019,
        ("arc", "test"): 437,
        ("mbpp", "train"): 299,
        ("mbpp", "test"): 128,
        ("winogrande", "train"): 887,
        ("winogrande", "test"): 380,
    }
    assert summary.skipped == 28
    assert len({r.id for r in records}) == len(records)


@needs_data
def test_routerbench_skipped_counts_only_the_requested_split(run: Callable[..., Imported]) -> None:
    """Importing one split counts only that split's dropped rows."""
    assert run("routerbench", "train")[0].skipped == 20
    assert run("routerbench", "test")[0].skipped == 8


@needs_data
def test_routerbench_scores_match_source_accuracy(run: Callable[..., Imported]) -> None:
    """Per-task accuracy (train+test) matches SOURCE.md within 0.01."""
    _, records, _ = run("routerbench")
    expected = {
        "arc": {
            "gpt-4-1106-preview": 0.954,
            "claude-v1": 0.908,
            "zero-one-ai/Yi-34B-Chat": 0.903,
            "mistralai/mixtral-8x7b-chat": 0.854,
            "gpt-3.5-turbo-1106": 0.834,
            "claude-instant-v1": 0.829,
            "meta/llama-2-70b-chat": 0.803,
            "mistralai/mistral-7b-chat": 0.670,
            "claude-v2": 0.587,
        },
        "mbpp": {
            "gpt-4-1106-preview": 0.686,
            "gpt-3.5-turbo-1106": 0.653,
            "claude-v2": 0.642,
            "claude-instant-v1": 0.604,
            "mistralai/mixtral-8x7b-chat": 0.541,
            "meta/code-llama-instruct-34b-chat": 0.518,
            "mistralai/mistral-7b-chat": 0.344,
        },
        "winogrande": {
            "gpt-4-1106-preview": 0.859,
            "zero-one-ai/Yi-34B-Chat": 0.754,
            "mistralai/mixtral-8x7b-chat": 0.679,
            "gpt-3.5-turbo-1106": 0.641,
            "mistralai/mistral-7b-chat": 0.566,
        },
    }
    for task, accuracies in expected.items():
        means = _mean_scores(records, task)
        for model, accuracy in accuracies.items():
            assert means[model] == pytest.approx(accuracy, abs=0.01), (task, model)


@needs_data
def test_routerbench_keeps_recorded_cost_and_text(run: Callable[..., Imported]) -> None:
    """cost_usd is total_cost (GPT-4 ~ $0.0094 per MBPP query) and answers are unwrapped."""
    summary, records, _ = run("routerbench")
    assert len(summary.models) == 11
    mbpp = [r.responses["gpt-4-1106-preview"] for r in records if r.task == "mbpp"]
    assert sum(r.cost_usd or 0 for r in mbpp) / len(mbpp) == pytest.approx(0.0094, rel=0.05)
    arc = next(r for r in records if r.task == "arc")
    assert not arc.messages[0].content.startswith("['")
    assert all(not r.text.startswith("['") for r in arc.responses.values())


@needs_data
def test_routerbench_equal_price_tokens_reproduce_cost(run: Callable[..., Imported]) -> None:
    """For equal-price models, tokens x price gives back the recorded cost."""
    _, records, _ = run("routerbench")
    price, _ = PRICES["routerbench"]["mistralai/mistral-7b-chat"]
    for record in records[:50]:
        r = record.responses["mistralai/mistral-7b-chat"]
        assert r.input_tokens is not None
        assert r.output_tokens is not None
        tokens = r.input_tokens + r.output_tokens
        assert tokens * price / 1e6 == pytest.approx(r.cost_usd, rel=0.01, abs=1e-7)


# --- AlpacaEval ----------------------------------------------------------------------------


@needs_data
def test_alpacaeval_records_and_missing_phi2(run: Callable[..., Imported]) -> None:
    """805 instructions, 12 models, phi-2 absent from exactly the 2 it never answered."""
    summary, records, _ = run("alpacaeval")
    assert summary.records == 805
    assert len({r.id for r in records}) == 805
    assert len(summary.models) == 12
    assert sum("phi-2" not in r.responses for r in records) == 2
    assert all(len(r.responses) >= 11 for r in records)
    assert {r.task for r in records} == {"chat"}


@needs_data
def test_alpacaeval_scores_match_source_win_rates(run: Callable[..., Imported]) -> None:
    """Mean preference - 1 per model matches SOURCE.md; the reference is exactly 0.5."""
    _, records, _ = run("alpacaeval")
    expected = {
        "phi-2": 0.024,
        "gemma-2b-it": 0.034,
        "gemma-7b-it": 0.069,
        "Qwen-14B-Chat": 0.075,
        "gpt-3.5-turbo-1106": 0.092,
        "OpenHermes-2.5-Mistral-7B": 0.103,
        "claude-2.1": 0.157,
        "claude-instant-1.2": 0.161,
        "FuseChat-Llama-3.2-1B-Instruct": 0.299,
        "FuseChat-Llama-3.2-3B-Instruct": 0.513,
        "FuseChat-Llama-3.1-8B-Instruct": 0.633,
        "gpt4_1106_preview": 0.5,
    }
    means = _mean_scores(records)
    for model, win_rate in expected.items():
        assert means[model] == pytest.approx(win_rate, abs=0.01), model
    assert {r.responses["gpt4_1106_preview"].score for r in records} == {0.5}


@needs_data
def test_alpacaeval_split_is_stratified_by_dataset(run: Callable[..., Imported]) -> None:
    """Each source subset is split 30/70 (to the nearest row)."""
    _, records, _ = run("alpacaeval")
    per_subset: dict[str, Counter[str]] = defaultdict(Counter)
    for record in records:
        per_subset[record.meta["dataset"]][record.meta["split"]] += 1
    assert set(per_subset) == {"helpful_base", "koala", "oasst", "selfinstruct", "vicuna"}
    for counts in per_subset.values():
        total = counts["train"] + counts["test"]
        assert abs(counts["train"] - 0.3 * total) <= 0.5


# --- Every importer -------------------------------------------------------------------------


@needs_data
@pytest.mark.parametrize("name", ["routellm-gsm8k", "alpacaeval", "routerbench"])
def test_train_and_test_partition_all(run: Callable[..., Imported], name: str) -> None:
    """train and test are disjoint, carry their meta.split, and together are 'all'."""
    _, everything, _ = run(name)
    _, train, _ = run(name, "train")
    _, test, _ = run(name, "test")
    train_ids, test_ids = {r.id for r in train}, {r.id for r in test}
    assert train_ids.isdisjoint(test_ids)
    assert train_ids | test_ids == {r.id for r in everything}
    assert {r.meta["split"] for r in train} == {"train"}
    assert {r.meta["split"] for r in test} == {"test"}


@needs_data
@pytest.mark.parametrize("name", ["routellm-gsm8k", "alpacaeval"])
def test_seeded_split_is_deterministic(
    run: Callable[..., Imported], tmp_path: Path, name: str
) -> None:
    """The same seed writes the same file; another seed picks another train set."""
    first = run(name, "train")[0]
    again = import_dataset(
        name, SOURCES[name], tmp_path / "again.jsonl", split="train", say=lambda _: None
    )
    assert again.out.read_bytes() == first.out.read_bytes()
    other = {r.id for r in run(name, "train", 1)[1]}
    assert other != {r.id for r in run(name, "train")[1]}
    assert len(other) == first.records


@needs_data
@pytest.mark.parametrize("name", ["routellm-gsm8k", "routerbench", "alpacaeval"])
def test_assumptions_are_said_and_returned(run: Callable[..., Imported], name: str) -> None:
    """Every assumption is printed through say(), one line each, and returned in the summary."""
    summary, _, said = run(name)
    assert len(summary.assumptions) >= 3
    assert all(line.startswith(f"{name}: ") and "\n" not in line for line in summary.assumptions)
    assert [line for line in said if line in summary.assumptions] == list(summary.assumptions)
    assert any("ceil(chars/4)" in line for line in summary.assumptions)


@needs_data
@pytest.mark.parametrize("name", ["routellm-gsm8k", "routerbench", "alpacaeval"])
def test_every_model_has_a_price(run: Callable[..., Imported], name: str) -> None:
    """PRICES covers every model an import produces."""
    summary, _, _ = run(name)
    assert set(summary.models) == set(PRICES[name])
    assert all(len(p) == 2 and p[0] > 0 and p[1] > 0 for p in PRICES[name].values())


# --- Sources --------------------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """A loopback HTTP server over the shared data folder; yields its base URL."""
    if not DATA.is_dir():
        pytest.skip(f"{DATA} not present")
    handler = functools.partial(_QuietHandler, directory=str(DATA))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("routellm-gsm8k", "routellm"),  # a mirror of the local layout, with gsm8k/ below
        ("routellm-gsm8k", "routellm/gsm8k"),  # the upstream folder itself
        ("routerbench", "routerbench-subset"),
        ("alpacaeval", "alpacaeval-subset"),
    ],
)
def test_url_source_gives_the_same_file(
    run: Callable[..., Imported], server: str, tmp_path: Path, name: str, path: str
) -> None:
    """Importing from a URL writes byte-for-byte the file a local import writes."""
    said: list[str] = []
    summary = import_dataset(name, f"{server}/{path}", tmp_path / "url.jsonl", say=said.append)
    assert summary.out.read_bytes() == run(name)[0].out.read_bytes()
    assert any("downloading" in line for line in said)


def test_failed_download_names_the_url(server: str, tmp_path: Path) -> None:
    """A 404 raises DatasetError naming the URL that failed."""
    with pytest.raises(DatasetError, match=rf"{server}/nowhere/.*404"):
        import_dataset("routerbench", f"{server}/nowhere", tmp_path / "x.jsonl", say=lambda _: None)
    assert not (tmp_path / "x.jsonl").exists()


@pytest.mark.parametrize("name", sorted(IMPORTERS))
def test_missing_source_folder_names_the_path(tmp_path: Path, name: str) -> None:
    """A source folder that does not exist raises DatasetError naming it."""
    missing = tmp_path / "no-such-folder"
    with pytest.raises(DatasetError, match="no-such-folder"):
        import_dataset(name, missing, tmp_path / "x.jsonl", say=lambda _: None)


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    """A folder without the expected files names the first one missing."""
    with pytest.raises(DatasetError, match=r"arc_challenge_test\.csv: file not found"):
        import_dataset("routerbench", tmp_path, tmp_path / "x.jsonl", say=lambda _: None)


def test_missing_column_names_file_and_column(tmp_path: Path) -> None:
    """A CSV without an expected column names the file and the column."""
    (tmp_path / "gsm8k_responses.csv").write_text("prompt,other\nq,1\n", encoding="utf-8")
    (tmp_path / "contaminated_prompts.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"gsm8k_responses\.csv:1: missing column"):
        import_dataset("routellm-gsm8k", tmp_path, tmp_path / "x.jsonl", say=lambda _: None)


def test_unknown_dataset_and_split_are_rejected(tmp_path: Path) -> None:
    """Bad names fail early with the known choices in the message."""
    with pytest.raises(DatasetError, match="known: routellm-gsm8k, routerbench, alpacaeval"):
        import_dataset("mmlu", tmp_path, tmp_path / "x.jsonl")
    with pytest.raises(DatasetError, match="unknown split 'dev'"):
        import_dataset("routerbench", tmp_path, tmp_path / "x.jsonl", split="dev")


# --- Helpers --------------------------------------------------------------------------------


def test_seeded_split_takes_30_percent_of_each_stratum() -> None:
    """Each stratum contributes round(30%) of its keys to train."""
    keys = [f"k{i}" for i in range(100)]
    strata = ["a"] * 10 + ["b"] * 90
    split = seeded_split(keys, strata, seed=3)
    assert sum(split[k] == "train" for k in keys[:10]) == 3
    assert sum(split[k] == "train" for k in keys[10:]) == 27
    assert split == seeded_split(keys, strata, seed=3)
    assert split != seeded_split(keys, strata, seed=4)


def test_unlist_falls_back_to_the_raw_cell() -> None:
    """A stringified one-string list is unwrapped; anything else is kept verbatim."""
    assert _unlist("['B']") == "B"
    assert _unlist("['a', 'b']") == "['a', 'b']"
    assert _unlist("not a list [") == "not a list ["
