"""cascade demo and the first-run path: bundled data, no keys, no network, clear errors."""

from __future__ import annotations

import builtins
import dataclasses
import gzip
import json
import socket
from pathlib import Path
from typing import Any

import pytest

from cascade.cli import main
from cascade.demo import DATASET, DEMO_CONFIG, NOTICE
from cascade.providers.dataset import load_dataset
from cascade.replay.bench import run_bench
from cascade.replay.importers import IMPORTERS


def test_bundled_data_is_what_the_notice_says() -> None:
    """300 GSM8K test-split rows, both models recorded, gzip, with the Apache-2.0 attribution."""
    records = load_dataset(DATASET)
    assert len(records) == 300
    assert {r.meta["split"] for r in records} == {"test"}
    for r in records:
        assert set(r.responses) == {"mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"}
    with gzip.open(DATASET) as fh:
        assert fh.readline().startswith(b"{")
    notice = NOTICE.read_text()
    assert "Apache License, Version 2.0" in notice
    assert "lm-sys/RouteLLM" in notice
    assert DATASET.stat().st_size < 200_000  # small enough to ship in the wheel


def test_demo_prints_real_numbers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The demo replays through the real engine: its numbers are cascade bench's, to the digit."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    assert main(["demo", "--json", "r.json"]) == 0
    out = capsys.readouterr().out
    demo = json.loads((tmp_path / "r.json").read_text())["tasks"]["math"]
    bench = run_bench(DEMO_CONFIG, DATASET).as_json()["tasks"]["math"]
    # the JSON's floats have 12 significant digits
    assert demo["cost_per_query"] == float(f"{bench['cost_per_query']:.12g}")
    assert demo["quality"] == float(f"{bench['quality']:.12g}")
    top, oracle = bench["baselines"]["always_top"], bench["baselines"]["oracle"]
    assert f"escalated {bench['escalation_rate'][0]:.1%}" in out
    assert f"cost {bench['cost_per_query'] / top['cost_per_query']:.1%} of always-GPT-4" in out
    assert f"costs {oracle['cost_per_query'] / top['cost_per_query']:.1%}" in out
    # It is a cascade between the baselines, not a copy of either.
    assert bench["baselines"]["always_first"]["quality"] < bench["quality"] < top["quality"]
    assert 0 < bench["escalation_rate"][0] < 1
    plot = tmp_path / "cascade-demo" / "tradeoff.png"
    assert f"plot: wrote tradeoff.png in the folder {plot.parent}\n" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the HTML report of the replay, from its ledger: the bench's escalation rate
    page = tmp_path / "cascade-demo" / "report.html"
    assert f"html: wrote report.html in the folder {page.parent} " in out
    escalation = bench["escalation_rate"][0]
    assert (f'data-metric="escalation_rate" data-task="math" data-value="{escalation!r}">'
            f"{escalation:.1%}</td>") in page.read_text()


def test_demo_without_matplotlib_still_prints(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """No [plot] extra: one line says so, and the numbers are printed all the same."""
    real_import = builtins.__import__

    def no_matplotlib(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.split(".")[0] in ("matplotlib", "plotly"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert ("plot: not drawn (matplotlib is not installed: pip install -e '.[plot]' in a clone "
            "of cascade-ladder)") in out
    assert "the cascade escalated" in out
    # nor plotly ([report]): one line too
    assert ("html: not written (the HTML report needs plotly (the [report] extra): pip install "
            "-e '.[report]' in a clone of cascade-ladder)") in out
    assert not (tmp_path / "cascade-demo").exists()


def test_bench_empty_dataset_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["bench", str(DEMO_CONFIG), str(empty)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "the dataset has no queries" in err


def test_bench_model_without_recordings(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A ladder with no recorded model exits 2; one unrecorded rung is a warning."""
    config = tmp_path / "c.yaml"
    text = DEMO_CONFIG.read_text().replace("gsm8k-300", str(DATASET.with_suffix("")))
    config.write_text(text.replace("name: gpt-4-1106-preview", "name: gpt-5"))
    assert main(["bench", str(config), str(DATASET)]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err
    assert "model 'gpt4' (name 'gpt-5') has no recordings" in err
    config.write_text(text.replace("name: gpt-4-1106-preview", "name: gpt-5")
                      .replace("name: mistralai/Mixtral-8x7B-Instruct-v0.1", "name: mixtral"))
    assert main(["bench", str(config), str(DATASET)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "model 'mixtral' (name 'mixtral'), 'gpt4' (name 'gpt-5') has no recordings" in err
    assert "gpt-4-1106-preview" in err  # what the dataset does record


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_import_without_source_uses_the_public_url(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """No SOURCE: the default URL; when it cannot be reached, the error says how to go offline."""
    url = f"http://127.0.0.1:{_closed_port()}/routellm/gsm8k"
    monkeypatch.setitem(IMPORTERS, "routellm-gsm8k",
                        dataclasses.replace(IMPORTERS["routellm-gsm8k"], default_url=url))
    code = main(["data", "import", "routellm-gsm8k", str(tmp_path / "x.jsonl")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{url}/gsm8k_responses.csv: download failed" in err
    assert "pass their folder: cascade data import routellm-gsm8k FOLDER OUT.jsonl" in err
    assert not (tmp_path / "x.jsonl").exists()


def test_demo_config_runs_one_query_by_id(capsys: pytest.CaptureFixture[str]) -> None:
    """A replay config answers `cascade run --query-id`; its dataset path is the config's."""
    first = load_dataset(DATASET)[0]
    code = main(["run", str(DEMO_CONFIG), "math", first.messages[0].content,  # type: ignore[arg-type]
                 "--query-id", first.id])
    out, err = capsys.readouterr()
    assert code == 0
    assert out.strip() in {r.text.strip() for r in first.responses.values()}
    assert "model=" in err


def test_replay_run_without_query_id_names_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    """`cascade run` on a replay config without --query-id says to pass it, in one line."""
    code = main(["run", str(DEMO_CONFIG), "math", "What is 2 + 2?"])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err.strip().splitlines() == [
        "error: task 'math' answers from recordings (replay provider recorded); pass "
        "--query-id ID, the query's id in the dataset"]


def test_plot_legend_names_every_mark_and_the_data(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Every mark drawn has a legend entry, and the title says which split it shows."""
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from cascade.replay.plot import plot_tradeoff

    seen: dict[str, Any] = {}
    real_savefig = Figure.savefig

    def capture(self: Figure, *args: Any, **kwargs: Any) -> None:
        ax = self.axes[0]
        seen["legend"] = [t.get_text() for t in ax.get_legend().get_texts()]
        seen["title"] = ax.get_title()
        seen["marks"] = len(ax.collections) + len(ax.lines)
        real_savefig(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", capture)
    report = run_bench(DEMO_CONFIG, DATASET).as_json()
    plot_tradeoff(report["tasks"], tmp_path / "p.png", frontier={"math": [(0.001, 0.8),
                                                                          (0.002, 0.84)]},
                  data=report["split"])
    assert seen["legend"] == ["single model (always that one)", "calibration frontier (train)",
                              "oracle", "cascade", "always-top quality"]
    # two single-model points share one entry; every other mark has its own
    assert seen["marks"] == len(seen["legend"]) + 1
    assert seen["title"].startswith("math [test data, n=300]: cascade 23% of top cost")


def test_demo_plot_to_an_unwritable_place(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    assert main(["demo", "--plot", str(tmp_path / "no-such-dir" / "p.png")]) == 0
    out = capsys.readouterr().out
    assert "plot: not written (" in out
    assert "the cascade escalated" in out


def test_demo_plot_folder_is_ignored_by_git() -> None:
    """The demo's default plot sits in a folder that the repository's .gitignore covers."""
    import shutil
    import subprocess

    from cascade.cli.entry import build_parser

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    plot = Path(build_parser().parse_args(["demo"]).plot)
    assert plot.parent != Path(".")  # a folder of its own, not the working directory
    root = Path(__file__).resolve().parents[2]
    # --no-index: whether the path would be ignored, whether or not it exists or is tracked
    ignored = subprocess.run(["git", "-C", str(root), "check-ignore", "-q", "--no-index",
                              str(plot)], check=False)
    assert ignored.returncode == 0, f"{plot} is not covered by .gitignore"
