"""Learning curve: certified cost/top as the labelled train set grows (issue 23, section 2).

    python benchmarks/learning_curve.py --data ../shared/data --seeds 20 --jobs 2 \
        --out benchmarks/results/learning_curve.json --plot benchmarks/results/learning_curve.png \
        [--sizes 100 300 1000 max] [--targets 0.95] [--datasets gsm8k,arc,...] \
        [--guarantee pac|expected] [--scheme auto|fixed|holdout|crossfit] [--delta 0.1] \
        [--max-seeds 10] [--config NAME=PATH ...]
    python benchmarks/learning_curve.py --report benchmarks/results/learning_curve.json \
        [--plot benchmarks/results/learning_curve.png]

For each dataset of ``benchmarks/savings.py`` (the held-aside ladders with their
``*_candidates.yaml`` configs, as in RESULTS.md's policy section), each train size n and each
seed, ``savings.run_seed`` makes the seeded split (stratified where the dataset asks, test = every
other row), calibrates at each target and measures the written config on the test rows: cost and
quality relative to always-top on the same rows, and a violation when test quality < R x test
always-top quality. A failed calibration counts as always-top (cost 1, quality 1).

Train sizes: a size is run when the test part keeps at least ``max(100, ceil(0.3 x rows))``
rows; ``max`` is the largest such size (``rows - that``). So on 300-row ladders the sizes are
100 and 200; on GSM8K (1,307 rows) 100, 300 and 914. Splits of one seed are nested: the train
rows at n = 100 are among those at n = 300 (``split_records`` shuffles once per seed).
Stratified splits round per stratum, so their train size can differ from n by a row or two;
each run records its own ``n_train``.

At each dataset's largest n, ``benchmarks/ceiling.py`` also gives the in-sample ceiling on the
same test rows: the cheapest candidate of the calibrator's own family chosen on the test answers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import math
import multiprocessing
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.ceiling import CANDIDATE_CONFIGS, in_sample_ceiling  # noqa: E402
from benchmarks.savings import DATASETS, Job, imported, run_seed  # noqa: E402
from benchmarks.savings_stats import split_records, spread, summarize  # noqa: E402
from cascade.providers.dataset import load_dataset, write_dataset  # noqa: E402

DASH = "\u2013"
MIN_TEST_ROWS = 100
MIN_TEST_SHARE = 0.3


def train_sizes(rows: int, sizes: Sequence[str]) -> list[tuple[int, str]]:
    """(n, as asked) for every size this many rows allows, ascending; ``max`` included once."""
    largest = rows - max(MIN_TEST_ROWS, math.ceil(MIN_TEST_SHARE * rows))
    out: dict[int, str] = {}
    for s in sizes:
        n = largest if s == "max" else int(s)
        if 0 < n <= largest:
            out.setdefault(n, s)
    return sorted(out.items())


@dataclass(frozen=True, slots=True)
class Point:
    """One split to run: ``savings.Job`` plus the train size it stands for."""

    job: Job
    n: int
    size: str
    largest: bool
    rows: int
    scheme: str


def run_point(point: Point) -> list[dict[str, Any]]:
    """One dataset x n x seed: ``savings.run_seed``, plus the ceiling at the largest n."""
    job = point.job
    started = time.perf_counter()
    out = run_seed(job)
    for row in out:
        row.update(n=point.n, size=point.size, largest=point.largest, rows=point.rows)
    if point.largest:
        try:
            records = load_dataset(job.records_path)
            ds = job.dataset
            stratum = (lambda r: r.meta.get(ds.stratify)) if ds.stratify else None
            train, test = split_records(records, job.seed, job.train_fraction, stratum)
            folder = Path(job.scratch) / f"ceiling-{ds.name}-{job.seed}"
            folder.mkdir(parents=True, exist_ok=True)
            write_dataset(folder / "train.jsonl", train)
            write_dataset(folder / "test.jsonl", test)
            got = in_sample_ceiling(
                ROOT / job.config,
                folder / "train.jsonl",
                folder / "test.jsonl",
                ds.task,
                job.targets,
                point.scheme,
            )
            for row in out:
                row["ceiling_family"] = got["family"]
                row["ceiling_cost_ratio"] = got["cost_ratio"][f"{row['target']:g}"]
        except Exception as exc:  # recorded; the run goes on
            for row in out:
                row["ceiling_error"] = f"{type(exc).__name__}: {exc}"
                row["ceiling_traceback"] = traceback.format_exc(limit=3)
    print(
        f"  {job.dataset.name} n={point.n} seed={job.seed}: {time.perf_counter() - started:.1f} s",
        file=sys.stderr,
        flush=True,
    )
    return out


# What each run keeps in the committed JSON: the summary above it holds the aggregates (and the
# baselines); per-run messages and baseline details would make the file several megabytes.
RUN_FIELDS = (
    "dataset", "seed", "target", "n", "size", "largest", "n_train", "n_test", "status",
    "outcome", "ladder", "cost_ratio", "quality_ratio", "violated", "runtime_s",
    "ceiling_family", "ceiling_cost_ratio", "ceiling_error",
)


def slim(run: Mapping[str, Any]) -> dict[str, Any]:
    """A run with only ``RUN_FIELDS`` (those it has)."""
    return {k: run[k] for k in RUN_FIELDS if k in run}


def curve_summary(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``savings_stats.summarize`` per (dataset, n, target), with the ceiling at the largest n
    (its spread, and the spread of each seed's cost/top minus its own ceiling)."""
    groups: dict[tuple[str, int], list[Mapping[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["dataset"], run["n"]), []).append(run)
    out = []
    for (_, n), rows in groups.items():
        for s in summarize(rows):
            mine = [r for r in rows if r["target"] == s["target"]]
            ceil = [
                r["ceiling_cost_ratio"] for r in mine if r.get("ceiling_cost_ratio") is not None
            ]
            gaps = [
                r["cost_ratio"] - r["ceiling_cost_ratio"]
                for r in mine
                if r.get("ceiling_cost_ratio") is not None and r["cost_ratio"] is not None
            ]
            done = [r for r in mine if r["outcome"] != "error"]
            alone = sum(r["outcome"] == "failed" or len(r.get("ladder") or ()) == 1 for r in done)
            out.append(
                {
                    **s,
                    "n": n,
                    # failed, or certified nothing cheaper and kept the top rung alone: cost 1
                    "top_alone_share": alone / len(done) if done else None,
                    "size": mine[0]["size"],
                    "largest": mine[0]["largest"],
                    "n_train": spread([r["n_train"] for r in mine]),
                    "n_test": spread([r["n_test"] for r in mine]),
                    "ceiling_family": next(
                        (r["ceiling_family"] for r in mine if r.get("ceiling_family")), None
                    ),
                    "ceiling_cost_ratio": spread(ceil),
                    "gap_to_ceiling": spread(gaps),
                    "ceiling_errors": sorted(
                        {r["ceiling_error"] for r in mine if r.get("ceiling_error")}
                    ),
                }
            )
    return sorted(out, key=_order)


def _order(s: Mapping[str, Any]) -> tuple[int, float, int]:
    """Datasets in ``DATASETS`` order, then R, then n."""
    names = list(DATASETS)
    return (names.index(s["dataset"]) if s["dataset"] in names else len(names), s["target"], s["n"])


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _ranged(s: Mapping[str, float] | None) -> str:
    return "-" if s is None else f"{s['median']:.1%} [{s['min']:.1%}{DASH}{s['max']:.1%}]"


def markdown(summary: Sequence[Mapping[str, Any]]) -> str:
    """One row per dataset x R x n; the ceiling columns are filled at the largest n."""
    lines = [
        "| dataset | R | n | test rows | seeds ok/failed/error | "
        f"cost/top: median [min{DASH}max] | IQR | top alone | quality/top: median | "
        f"violation rate | in-sample ceiling: median [min{DASH}max] | "
        "gap to ceiling (per seed): median |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in sorted(summary, key=_order):
        cost, quality, test, gap = (
            s["cost_ratio"],
            s["quality_ratio"],
            s["n_test"],
            s["gap_to_ceiling"],
        )
        cells = [
            s["dataset"],
            f"{s['target']:g}",
            f"{s['n']:,}" + (" (max)" if s["largest"] else ""),
            "-" if test is None else f"{test['median']:,.0f}",
            f"{s['ok']}/{s['failed']}/{s['errors']}",
            _ranged(cost),
            "-" if cost is None else f"{cost['q25']:.1%}{DASH}{cost['q75']:.1%}",
            _pct(s.get("top_alone_share")),
            _pct(None if quality is None else quality["median"]),
            _pct(s["violation_rate"]),
            _ranged(s["ceiling_cost_ratio"]),
            "-" if gap is None else format(gap["median"], "+.1%"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets_table(summary: Sequence[Mapping[str, Any]]) -> str:
    """The issue's two targets per dataset x R: does the median cost/top fall (never rise) as n
    grows, and is it within 0.10 of the in-sample ceiling at the largest n?"""
    lines = [
        "| dataset | R | median cost/top by n | never rises in n | at the largest n: median "
        "cost/top - median ceiling | within 0.10 |",
        "|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, float], list[Mapping[str, Any]]] = {}
    for s in sorted(summary, key=_order):
        if s["cost_ratio"] is not None:
            groups.setdefault((s["dataset"], s["target"]), []).append(s)
    for (name, target), rows in groups.items():
        med = [s["cost_ratio"]["median"] for s in rows]
        falls = all(b <= a + 1e-12 for a, b in itertools.pairwise(med))
        path = " → ".join(f"{s['n']:,}: {m:.1%}" for s, m in zip(rows, med, strict=True))
        ceiling = rows[-1]["ceiling_cost_ratio"]
        gap = None if ceiling is None else med[-1] - ceiling["median"]
        lines.append(
            f"| {name} | {target:g} | {path} | {'yes' if falls else 'no'} | "
            f"{'-' if gap is None else format(gap, '+.1%')} | "
            f"{'-' if gap is None else ('yes' if gap <= 0.10 + 1e-12 else 'no')} |"
        )
    return "\n".join(lines)


def plot(summary: Sequence[Mapping[str, Any]], out: Path, title: str) -> None:
    """One panel per dataset: median cost/top against n (IQR bars), one line per R, the
    in-sample ceiling at the largest n as a star, the violation rate beside each point."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    names = [d for d in DATASETS if any(s["dataset"] == d for s in summary)]
    names += sorted({s["dataset"] for s in summary} - set(names))
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    targets = sorted({s["target"] for s in summary})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, name in zip(axes.flat, names, strict=False):
        for k, target in enumerate(targets):
            pts = sorted(
                (
                    s
                    for s in summary
                    if s["dataset"] == name
                    and s["target"] == target
                    and s["cost_ratio"] is not None
                ),
                key=lambda s: s["n"],
            )
            if not pts:
                continue
            color = colors[k % len(colors)]
            xs = [s["n"] for s in pts]
            med = np.array([s["cost_ratio"]["median"] for s in pts])
            lo = med - np.array([s["cost_ratio"]["q25"] for s in pts])
            hi = np.array([s["cost_ratio"]["q75"] for s in pts]) - med
            ax.errorbar(
                xs,
                med,
                yerr=[lo, hi],
                marker="o",
                capsize=3,
                color=color,
                label=f"certified, R = {target:g} (median, IQR)",
            )
            for s, y in zip(pts, med, strict=True):
                if s["violation_rate"] is not None:
                    ax.annotate(
                        f"{s['violation_rate']:.0%}",
                        (s["n"], y),
                        fontsize=7,
                        xytext=(4, -10),
                        textcoords="offset points",
                        color=color,
                    )
            last = pts[-1]
            if last["ceiling_cost_ratio"] is not None:
                ax.scatter(
                    [last["n"]],
                    [last["ceiling_cost_ratio"]["median"]],
                    marker="*",
                    s=120,
                    color=color,
                    edgecolor="black",
                    zorder=4,
                    label=f"in-sample ceiling, R = {target:g}",
                )
        ax.set_xscale("log")
        ticks = sorted({s["n"] for s in summary if s["dataset"] == name})
        # a size within 15% of the next one (1,000 and arc's 1,019) is left unlabelled
        shown = [f"{t:,}" if b / t >= 1.15 else "" for t, b in itertools.pairwise(ticks)]
        ax.set_xticks(ticks, [*shown, f"{ticks[-1]:,}"], fontsize=8)
        ax.minorticks_off()
        ax.set_ylim(0, 1.08)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("labelled train queries n")
        ax.set_ylabel("cost / always-top")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="lower center", ncol=max(1, len(labels)), fontsize=8, frameon=False
    )
    fig.suptitle(
        title + "\n(numbers beside the points: share of seeds below R on the test rows)",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _configs(items: Sequence[str]) -> dict[str, str]:
    out = {name: str(ROOT / path) for name, path in CANDIDATE_CONFIGS.items()}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or name not in DATASETS:
            raise SystemExit(
                f"--config wants NAME=PATH with NAME one of {', '.join(DATASETS)}; got {item!r}"
            )
        out[name] = str(Path(path).resolve())
    return out


def _title(settings: Mapping[str, Any]) -> str:
    return (
        f"Certified cost/top against train size ({settings['guarantee']} guarantee, scheme "
        f"{settings['scheme']}, delta = {settings['delta']:g}; test = the other rows)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20, help="split seeds 0..N-1")
    parser.add_argument(
        "--max-seeds",
        type=int,
        default=None,
        help="fewer seeds at each dataset's largest n (its slowest runs)",
    )
    parser.add_argument(
        "--sizes",
        nargs="+",
        default=["100", "300", "1000", "max"],
        help="train sizes; 'max' is the largest each dataset allows",
    )
    parser.add_argument("--targets", type=float, nargs="+", default=[0.95])
    parser.add_argument(
        "--datasets",
        default=",".join(DATASETS),
        help=f"comma-separated, from: {', '.join(DATASETS)}",
    )
    parser.add_argument("--guarantee", default="pac", choices=["pac", "expected"])
    parser.add_argument(
        "--scheme", default="auto", choices=["auto", "fixed", "holdout", "crossfit"]
    )
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="calibrate this config for dataset NAME (the ladders default to "
        "their *_candidates.yaml)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    parser.add_argument("--plot", type=Path, default=None, help="PNG file to write")
    parser.add_argument(
        "--report",
        type=Path,
        default=None,
        help="print the table of an existing JSON file (and --plot it); exit",
    )
    args = parser.parse_args(argv)
    if args.report is not None:
        doc = json.loads(args.report.read_text(encoding="utf-8"))
        print(markdown(doc["summary"]) + "\n\n" + targets_table(doc["summary"]))
        if args.plot is not None:
            plot(doc["summary"], args.plot, _title(doc["settings"]))
        return 0
    bad = [s for s in args.sizes if s != "max" and not s.isdigit()]
    if bad:
        parser.error(f"--sizes takes integers and 'max', got {', '.join(bad)}")
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        parser.error(f"unknown dataset(s) {', '.join(unknown)} (known: {', '.join(DATASETS)})")
    configs = _configs(args.config)
    extra = {"scheme": args.scheme, "guarantee": args.guarantee}
    label = f"{args.scheme}-{args.guarantee}"
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="learning-curve-") as scratch:
        work = Path(scratch) / "imported"
        work.mkdir()
        points, info = [], {}
        for name, (rows, path) in imported(names, args.data, work, Path(scratch), parser).items():
            ds = DATASETS[name]
            config = configs.get(name, ds.config)
            sizes = train_sizes(len(rows), args.sizes)
            info[name] = {
                **asdict(ds),
                "config": config,
                "rows": len(rows),
                "sizes": [n for n, _ in sizes],
            }
            for n, size in sizes:
                largest = n == sizes[-1][0]
                seeds = args.max_seeds if largest and args.max_seeds else args.seeds
                folder = Path(scratch) / f"n{n}"  # run_seed names its folders by dataset+seed
                folder.mkdir(exist_ok=True)
                base = Job(
                    ds,
                    config,
                    0,
                    tuple(args.targets),
                    n / len(rows),
                    None,
                    args.delta,
                    label,
                    str(path),
                    str(folder),
                    extra,
                )
                points += [
                    Point(replace(base, seed=seed), n, size, largest, len(rows), args.scheme)
                    for seed in range(seeds)
                ]
        points.sort(key=lambda p: -p.n)  # the slowest first, so the workers finish together
        print(
            f"{len(points)} splits x {len(args.targets)} targets on {args.jobs} process(es)",
            file=sys.stderr,
        )
        if args.jobs > 1:
            with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
                parts = list(pool.imap_unordered(run_point, points, chunksize=1))
        else:
            parts = [run_point(p) for p in points]
    runs = sorted(
        (row for part in parts for row in part),
        key=lambda r: (r["dataset"], r["n"], r["seed"], r["target"]),
    )
    summary = curve_summary(runs)
    settings = {
        "seeds": args.seeds,
        "max_seeds": args.max_seeds,
        "sizes": args.sizes,
        "targets": args.targets,
        "guarantee": args.guarantee,
        "scheme": args.scheme,
        "delta": args.delta,
        "jobs": args.jobs,
        "min_test_rows": MIN_TEST_ROWS,
        "min_test_share": MIN_TEST_SHARE,
    }
    doc = {
        "command": "python benchmarks/learning_curve.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "cpus": multiprocessing.cpu_count()},
        "settings": settings,
        "datasets": info,
        "wall_s": time.perf_counter() - started,
        "summary": summary,
        "runs": [slim(r) for r in runs],
    }
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(doc, separators=(",", ":"), allow_nan=False)
        args.out.write_text(text + "\n", encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)
    if args.plot is not None:
        plot(summary, args.plot, _title(settings))
        print(f"wrote {args.plot}", file=sys.stderr)
    print(markdown(summary) + "\n\n" + targets_table(summary))
    for s in summary:
        for message in [*s["error_messages"], *s["ceiling_errors"]]:
            print(f"error: {s['dataset']} n={s['n']} R={s['target']:g}: {message}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
