"""Savings over split seeds: calibrate on a seeded train half, measure on the held-out half.

    python benchmarks/savings.py --seeds 20 --targets 0.90 0.95 \
        --out benchmarks/results/savings.json [--datasets gsm8k,arc,...] [--jobs 2] \
        [--method NAME] [--delta D] [--train-fraction 0.5] [--config NAME=PATH ...]
    python benchmarks/savings.py --report benchmarks/results/savings.json [--compare OTHER.json]

For each dataset and seed: a seeded (stratified where the source asks for it) split of the
imported rows into train and test JSONL files; for each target R, ``cascade.calibration.calibrate.calibrate``
on train with ``test=`` the held-out part, whose ``run_bench`` report gives the test cost and
quality. ``--method`` and ``--delta`` are forwarded as ``method=`` and ``delta=`` only when given.
A failed calibration counts as the user falling back to always-top; an exception is recorded
with its message and the run goes on. Baselines at matched quality come from the recorded
responses of the test split (``benchmarks/savings_stats.py`` defines each). Output: a JSON file
with every per-seed number and the summary, and a Markdown table on stdout.

Needs ``../shared/data`` (or ``--data``); the data is imported into a temporary folder (or
``--work``) with the same importers as ``cascade data import ... --split all``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import multiprocessing
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.savings_stats import baselines, markdown_table, split_records, summarize  # noqa: E402
from cascade.config import CascadeConfig, load_config  # noqa: E402
from cascade.errors import CascadeError  # noqa: E402
from cascade.providers.dataset import ReplayRecord, load_dataset, write_dataset  # noqa: E402
from cascade.replay.bench import recorded_cost  # noqa: E402
from cascade.replay.importers import import_dataset  # noqa: E402

__all__ = ["DATASETS", "Dataset", "imported", "load_rows", "main", "run_seed", "test_matrix"]


@dataclass(frozen=True, slots=True)
class Dataset:
    """One benchmark: where its rows come from, the config and task calibrated.

    ``source`` is an importer name (``routellm-gsm8k``, ``routerbench``, ``alpacaeval``) with
    ``folder`` under the data root, or ``file`` for a file already in the replay format.
    ``stratify`` names a ``meta`` key the split is stratified by. ``held_aside`` ladders are
    development data that only check a calibrator on data it was not designed on.
    """

    name: str
    source: str
    folder: str
    config: str
    task: str
    stratify: str | None = None
    held_aside: bool = False


DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset("gsm8k", "routellm-gsm8k", "routellm", "configs/bench/gsm8k.yaml", "math"),
        Dataset("arc", "routerbench", "routerbench-subset", "configs/bench/routerbench.yaml",
                "arc"),
        Dataset("winogrande", "routerbench", "routerbench-subset",
                "configs/bench/routerbench.yaml", "winogrande"),
        Dataset("mbpp", "routerbench", "routerbench-subset", "configs/bench/routerbench.yaml",
                "mbpp"),
        Dataset("alpacaeval", "alpacaeval", "alpacaeval-subset", "configs/bench/alpacaeval.yaml",
                "chat", stratify="dataset"),
        Dataset("alpacaeval-fusechat", "alpacaeval", "alpacaeval-subset",
                "configs/bench/alpacaeval-fusechat.yaml", "chat", stratify="dataset"),
        Dataset("ladder-llama", "file", "ladders-dev/gsm8k_llama.jsonl",
                "benchmarks/configs/ladder_llama.yaml", "gsm8k", held_aside=True),
        Dataset("ladder-qwen-oai", "file", "ladders-dev/gsm8k_qwen_oai.jsonl",
                "benchmarks/configs/ladder_qwen_oai.yaml", "gsm8k", held_aside=True),
    )
}


def load_rows(ds: Dataset, data: Path, work: Path) -> list[ReplayRecord]:
    """Every row of the dataset's task, imported once per source into ``work``."""
    if ds.source == "file":
        path = data / ds.folder
    else:
        path = work / f"{ds.source}.jsonl"
        if not path.exists():
            import_dataset(ds.source, data / ds.folder, path, split="all", say=lambda s: None)
    return [r for r in load_dataset(path) if (r.task or ds.task) == ds.task]


def test_matrix(
    cfg: CascadeConfig, task: str, records: Sequence[ReplayRecord]
) -> tuple[np.ndarray, np.ndarray]:
    """(rungs, n) recorded cost and score per rung; 0 and 0 where a model has no recording."""
    ladder = [r.model for r in cfg.tasks[task].ladder]
    cost = np.zeros((len(ladder), len(records)))
    score = np.zeros((len(ladder), len(records)))
    for q, record in enumerate(records):
        for i, key in enumerate(ladder):
            response = record.responses.get(cfg.models[key].name)
            if response is not None:
                cost[i, q] = recorded_cost(response, cfg, key)
                score[i, q] = response.score
    return cost, score


@dataclass(frozen=True, slots=True)
class Job:
    dataset: Dataset
    config: str
    seed: int
    targets: tuple[float, ...]
    train_fraction: float
    method: str | None
    delta: float | None
    label: str
    records_path: str
    scratch: str
    extra: dict[str, Any] = field(default_factory=dict)  # more calibrate(...) keywords


def _quiet() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def run_seed(job: Job) -> list[dict[str, Any]]:
    """Split once for this seed, then calibrate and measure at every target."""
    _quiet()
    from cascade.calibration.calibrate import (
        calibrate,  # the calibrator under test, imported in the worker
    )

    ds = job.dataset
    records = load_dataset(job.records_path)
    stratum = (lambda r: r.meta.get(ds.stratify)) if ds.stratify else None
    train, test = split_records(records, job.seed, job.train_fraction, stratum)
    folder = Path(job.scratch) / f"{ds.name}-{job.seed}"
    folder.mkdir(parents=True, exist_ok=True)
    train_path, test_path = folder / "train.jsonl", folder / "test.jsonl"
    write_dataset(train_path, train)
    write_dataset(test_path, test)
    cfg = load_config(ROOT / job.config)
    cost, score = test_matrix(cfg, ds.task, test)
    kwargs: dict[str, Any] = {}
    if job.method is not None:
        kwargs["method"] = job.method
    if job.delta is not None:
        kwargs["delta"] = job.delta
    kwargs.update(job.extra)
    out = []
    for target in job.targets:
        base = baselines(cost, score, target)
        row: dict[str, Any] = {
            "dataset": ds.name,
            "seed": job.seed,
            "target": target,
            "method": job.method,
            "delta": job.delta,
            "label": job.label,
            "n_train": len(train),
            "n_test": len(test),
            "baselines": base,
        }
        started = time.perf_counter()
        try:
            result = calibrate(
                ROOT / job.config, train_path, target_quality=target, test=test_path,
                task=ds.task, say=lambda s: None, **kwargs,
            )
        except Exception as exc:
            row.update(outcome="error", error=f"{type(exc).__name__}: {exc}",
                       traceback=traceback.format_exc(limit=3), runtime_s=None,
                       cost_ratio=None, quality_ratio=None, violated=None)
            out.append(row)
            continue
        row["runtime_s"] = time.perf_counter() - started
        top = base["always_top"]
        row["status"] = result.status
        row["message"] = result.message
        row["ladder"] = list(result.ladder)
        row["thresholds"] = result.as_json()["thresholds"]
        if result.status == "failed" or result.test is None:
            # The user keeps always-top: its cost and quality on this test split.
            row.update(outcome="failed", cost_ratio=1.0, quality_ratio=1.0, violated=False,
                       test_cost=top["cost_per_query"], test_quality=top["quality"])
        else:
            t = result.test
            t_top = t["baselines"]["always_top"]
            row.update(
                outcome="ok",
                test_cost=t["cost_per_query"],
                test_quality=t["quality"],
                cost_ratio=t["cost_per_query"] / t_top["cost_per_query"],
                quality_ratio=t["quality"] / t_top["quality"] if t_top["quality"] else None,
                violated=bool(t["quality"] < target * t_top["quality"] - 1e-12),
                escalation_rate=t.get("escalation_rate"),
            )
            # Our baselines and run_bench's must describe the same split (first rung and
            # oracle only when calibration kept the whole ladder: they depend on it).
            mine = [top["cost_per_query"], top["quality"]]
            theirs = [t_top["cost_per_query"], t_top["quality"]]
            if len(result.ladder) == len(cfg.tasks[ds.task].ladder):
                mine += [base["oracle"]["cost_per_query"], base["always_first"]["quality"]]
                theirs += [t["baselines"]["oracle"]["cost_per_query"],
                           t["baselines"]["always_first"]["quality"]]
            row["baselines_match_run_bench"] = bool(np.allclose(mine, theirs, rtol=1e-9,
                                                                atol=1e-12))
        out.append(row)
    return out


def _parse_configs(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or name not in DATASETS:
            raise SystemExit(f"--config wants NAME=PATH with NAME one of {', '.join(DATASETS)}; "
                             f"got {item!r}")
        out[name] = str(Path(path).resolve())  # relative to the current folder
    return out


def _report(path: Path, compare: Path | None) -> str:
    doc = json.loads(path.read_text(encoding="utf-8"))
    text = markdown_table(doc["summary"])
    if compare is not None:
        other = {(s["dataset"], s["target"]): s
                 for s in json.loads(compare.read_text(encoding="utf-8"))["summary"]}
        lines = ["", f"| dataset | R | median cost/top: this run | {compare.name} | "
                 "violation rate: this run | " f"{compare.name} |", "|---|---|---|---|---|---|"]
        for s in doc["summary"]:
            o = other.get((s["dataset"], s["target"]))

            def med(x: dict[str, Any] | None) -> str:
                return "-" if not x or not x["cost_ratio"] else f"{x['cost_ratio']['median']:.1%}"

            def vio(x: dict[str, Any] | None) -> str:
                return "-" if not x or x["violation_rate"] is None else f"{x['violation_rate']:.0%}"

            lines.append(f"| {s['dataset']} | {s['target']:g} | {med(s)} | {med(o)} | "
                         f"{vio(s)} | {vio(o)} |")
        text += "\n" + "\n".join(lines)
    return text


def imported(
    names: Sequence[str], data: Path, work: Path, scratch: Path, parser: argparse.ArgumentParser
) -> dict[str, tuple[list[ReplayRecord], Path]]:
    """Each dataset's rows, imported from ``data`` (into ``work``) and written as one replay file
    in ``scratch``; an import error ends the program with one line."""
    out = {}
    for name in names:
        try:
            rows = load_rows(DATASETS[name], data, work)
        except (CascadeError, OSError) as exc:
            parser.exit(2, f"{parser.prog}: {name}: {exc}\n")
        path = scratch / f"{name}.jsonl"
        write_dataset(path, rows)
        out[name] = (rows, path)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20, help="split seeds 0..N-1")
    parser.add_argument("--targets", type=float, nargs="+", default=[0.90, 0.95])
    parser.add_argument("--datasets", default=",".join(DATASETS),
                        help=f"comma-separated, from: {', '.join(DATASETS)}")
    parser.add_argument("--train-fraction", type=float, default=0.5)
    parser.add_argument("--method", default=None, help="forwarded as calibrate(method=...)")
    parser.add_argument("--delta", type=float, default=None,
                        help="forwarded as calibrate(delta=...)")
    parser.add_argument("--bound", default=None, help="forwarded as calibrate(bound=...)")
    parser.add_argument("--scheme", default=None, help="forwarded as calibrate(scheme=...)")
    parser.add_argument("--guarantee", default=None,
                        help="forwarded as calibrate(guarantee=...)")
    parser.add_argument("--fit-fraction", type=float, default=None,
                        help="forwarded as calibrate(fit_fraction=...)")
    parser.add_argument("--label", default=None,
                        help="the method's name in the table (default: --method, else "
                        "'default')")
    parser.add_argument("--config", action="append", default=[], metavar="NAME=PATH",
                        help="calibrate this config for dataset NAME instead of the default")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--work", type=Path, default=None, help="folder for imported data")
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    parser.add_argument("--report", type=Path, default=None,
                        help="print the table of an existing JSON file and exit")
    parser.add_argument("--compare", type=Path, default=None,
                        help="with --report: a second JSON file to set side by side")
    args = parser.parse_args(argv)
    if args.report is not None:
        print(_report(args.report, args.compare))
        return 0
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        parser.error(f"unknown dataset(s) {', '.join(unknown)} (known: {', '.join(DATASETS)})")
    configs = _parse_configs(args.config)
    label = args.label or args.method or "default"
    extra: dict[str, Any] = {}
    if args.bound is not None:
        extra["bound"] = args.bound
    if args.scheme is not None:
        extra["scheme"] = args.scheme
    if args.fit_fraction is not None:
        extra["fit_fraction"] = args.fit_fraction
    if args.guarantee is not None:
        extra["guarantee"] = args.guarantee
    _quiet()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="savings-") as scratch:
        work = args.work or Path(scratch) / "imported"
        work.mkdir(parents=True, exist_ok=True)
        jobs, info = [], {}
        for name, (rows, path) in imported(names, args.data, work, Path(scratch), parser).items():
            ds = DATASETS[name]
            config = configs.get(name, ds.config)
            info[name] = {**asdict(ds), "config": config, "rows": len(rows)}
            jobs += [Job(ds, config, seed, tuple(args.targets), args.train_fraction, args.method,
                         args.delta, label, str(path), scratch, extra) for seed in range(args.seeds)]
        print(f"{len(jobs)} splits x {len(args.targets)} targets on {args.jobs} process(es)",
              file=sys.stderr)
        if args.jobs > 1:
            with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
                parts = pool.map(run_seed, jobs, chunksize=1)
        else:
            parts = [run_seed(job) for job in jobs]
    runs = [row for part in parts for row in part]
    summary = summarize(runs)
    doc = {
        "command": "python benchmarks/savings.py " + " ".join(sys.argv[1:] if argv is None
                                                               else argv),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "cpus": multiprocessing.cpu_count()},
        "settings": {"seeds": args.seeds, "targets": args.targets, "method": args.method,
                     "label": label, "delta": args.delta, "extra": extra, "train_fraction": args.train_fraction,
                     "jobs": args.jobs},
        "datasets": info,
        "wall_s": time.perf_counter() - started,
        "summary": summary,
        "runs": runs,
    }
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n", encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)
    print(markdown_table(summary))
    for s in summary:
        for message in s["error_messages"]:
            print(f"error: {s['dataset']} R={s['target']:g}: {message}", file=sys.stderr)
    mismatched = sum(r.get("baselines_match_run_bench") is False for r in runs)
    if mismatched:
        print(f"warning: {mismatched} runs whose baselines disagree with run_bench's",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
