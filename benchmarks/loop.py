"""Loop benchmark: production traffic through the real gateway, recalibrated as labels arrive.

    python benchmarks/loop.py --rounds-of 250 --target 0.9 --out benchmarks/results/loop.json \
        [--plot benchmarks/results/loop.png] [--dataset gsm8k] [--shadow-rate 0.15] \
        [--feedback-share 0.5] [--seed 0] [--delta 0.1] [--concurrency 8] \
        [--reload auto|endpoint|restart] [--data ../shared/data] [--work DIR]

A dataset's queries (a seeded shuffle of all its rows) are sent, in rounds of ``--rounds-of``,
to ``cascade serve`` running in a subprocess. Its engine calls real provider code (the
``openai`` provider, through the SDK) against ``cascade.testing.MockLLMServer`` on 127.0.0.1,
which answers each (model, prompt) with that model's *recorded* answer to the query: its text,
token counts and, when the request asks for them, its log-probability. So every answer, token
count and cost is the recorded one, and the gateway, its evaluators, shadow calls and ledger
run as in production.

The served config is the dataset's hand-set config (``configs/bench/gsm8k.yaml`` for GSM8K)
with the providers pointed at the loopback server, ``logging: {content: true}``, a SQLite
ledger, ``shadow_rate`` and ``shadow_labels: true`` on the task, and an admin key. After each
run, with probability ``--feedback-share``, the client sends ``POST /v1/feedback`` with the
recorded score of the answer the gateway returned (the realistic case: some users rate). After
each round (once the shadow calls have drained), ``cascade calibrate CONFIG --from-ledger
--target-quality R --out NEW`` runs in a subprocess on everything the ledger holds so far; a
calibration that fails, or keeps the top rung alone (which would end the loop: no cheaper
answer would ever be recorded again), is not deployed. Otherwise NEW is copied over the served
config and the gateway reloads it with ``POST /admin/reload`` (``--reload endpoint``), or is
restarted on it (``--reload restart``; ``auto``, the default, restarts only when the gateway
has no reload endpoint).

Measured per round, on the round's queries: the gateway's cost per query (``x-cascade-cost-usd``,
which leaves out shadow calls; their cost, read from the ledger, is reported beside it), the
quality (the recorded score of the answer the gateway returned, found by the
``x-cascade-model`` header), and always-top's recorded cost and quality on the same queries.
The benchmark also checks itself: every returned text must be the recorded answer of the model
the header names, and every run's cost must equal the recorded cost of the rungs it called.

Needs ``../shared/data`` (or ``--data``); rows are imported with ``benchmarks/savings.py``'s
``load_rows`` into a temporary folder. The held-aside ladders (``--dataset ladder-llama`` or
``ladder-qwen-oai``) are read where they lie, never copied; their recordings carry their own
``cost_usd``, so the loop config prices them by input token (0.01 USD per 1M, output free) and
the upstream reports ``cost_usd x 1e8`` input tokens: the gateway's bill is the recorded cost
(to 1e-8 USD).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.savings import DATASETS, load_rows  # noqa: E402
from cascade.providers.dataset import RecordedResponse, ReplayRecord  # noqa: E402
from cascade.testing import MockLLMServer, Reply  # noqa: E402

CLIENT_KEY = "loop-client-key"
ADMIN_KEY = "loop-admin-key"
ENV = {
    "LOOP_UPSTREAM_KEY": "sk-loop-fake",  # the mock ignores it; the SDK wants one
    "LOOP_CLIENT_KEYS": CLIENT_KEY,
    "LOOP_ADMIN_KEYS": ADMIN_KEY,
}
# Recordings that carry their own cost_usd are billed by input token at this price per 1M:
# the upstream reports cost_usd / PER_TOKEN input tokens, so tokens x price is the cost.
TOKEN_PRICE = 0.01
PER_TOKEN = TOKEN_PRICE / 1e6


# ---------------------------------------------------------------- the recorded upstream


class Recorded:
    """Answers (model, prompt) with the model's recorded response to that query."""

    def __init__(self, rows: Sequence[ReplayRecord], priced_by_cost: bool) -> None:
        self.by_prompt: dict[str, ReplayRecord] = {}
        for row in rows:
            key = _prompt_key([m.model_dump() for m in row.messages])
            if key in self.by_prompt:
                raise SystemExit(f"error: two rows share a prompt ({row.id}); cannot key on it")
            self.by_prompt[key] = row
        self.priced_by_cost = priced_by_cost
        self.misses = 0

    def reply(self, model: str, body: dict[str, Any]) -> Reply:
        row = self.by_prompt.get(_prompt_key(body.get("messages", [])))
        response = row.responses.get(model) if row is not None else None
        if response is None:
            self.misses += 1
            return Reply(status=404, message=f"no recording of {model} for this prompt")
        if self.priced_by_cost:
            # billed by input token (an output count above max_tokens is invalid usage)
            tokens_in, tokens_out = round((response.cost_usd or 0.0) / PER_TOKEN), 1
        else:
            tokens_in, tokens_out = response.input_tokens or 0, response.output_tokens or 0
        return Reply(
            text=response.text,
            input_tokens=tokens_in,
            output_tokens=tokens_out,
            logprobs=None if response.logprob is None else [response.logprob],
        )


def _prompt_key(messages: Sequence[Any]) -> str:
    parts = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):  # the SDK may send content parts
            content = "".join(p.get("text", "") for p in content)
        parts.append(f"{m.get('role')}\x00{content}")
    return "\x01".join(parts)


# ---------------------------------------------------------------- the gateway subprocess


class Gateway:
    """``cascade serve CONFIG --port 0`` in a subprocess, its stderr kept in a log file."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config, self.log = config, log
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.starts = 0

    def start(self) -> None:
        env = {**os.environ, **ENV, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cascade.cli", "serve", str(self.config), "--port", "0"],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env=env,
            cwd=ROOT,
        )
        self.starts += 1
        ready = threading.Event()

        def drain(proc: subprocess.Popen[str]) -> None:
            assert proc.stderr is not None
            with self.log.open("a") as fh:
                for line in proc.stderr:
                    fh.write(line)
                    fh.flush()
                    found = re.search(r"listening on (http://\S+)", line)
                    if found:
                        self.url = found.group(1)
                        ready.set()

        threading.Thread(target=drain, args=(self.proc,), daemon=True).start()
        if not ready.wait(60) or self.proc.poll() is not None:
            raise SystemExit(f"error: cascade serve did not start; see {self.log}")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx2.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx2.HTTPError:
                time.sleep(0.05)
        raise SystemExit(f"error: cascade serve is not healthy; see {self.log}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def reload(self, mode: str) -> str:
        """Serve the config file's new contents: ``endpoint``, or ``restart``."""
        if mode in ("auto", "endpoint"):
            answer = httpx2.post(
                f"{self.url}/admin/reload",
                headers={"authorization": f"Bearer {ADMIN_KEY}"},
                timeout=60,
            )
            if answer.status_code == 200 and answer.json().get("reloaded"):
                return "endpoint"
            if mode == "endpoint" or answer.status_code != 404:
                raise SystemExit(f"error: POST /admin/reload: {answer.status_code} {answer.text}")
        self.stop()
        self.start()
        return "restart"


# ---------------------------------------------------------------- one round of traffic


@dataclass
class Run:
    """What one query's request returned, and the recording it is checked against."""

    id: str
    run_id: str
    model: str  # the models: key that answered
    cost: float
    steps: int
    score: float
    top_cost: float
    top_score: float
    text_ok: bool
    rated: bool


def send(
    client: httpx2.Client,
    url: str,
    task: str,
    row: ReplayRecord,
    keys: dict[str, str],
    top_key: str,
    costs: dict[str, Any],
    rated: bool,
) -> Run:
    body = {"model": task, "messages": [m.model_dump() for m in row.messages]}
    headers = {"authorization": f"Bearer {CLIENT_KEY}"}
    answer = client.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=120)
    if answer.status_code != 200:
        raise SystemExit(f"error: {row.id}: gateway answered {answer.status_code}: {answer.text}")
    model = answer.headers["x-cascade-model"]
    recorded = row.responses[keys[model]]
    top = row.responses[keys[top_key]]
    text = answer.json()["choices"][0]["message"]["content"]
    run = Run(
        id=row.id,
        run_id=answer.headers["x-cascade-run-id"],
        model=model,
        cost=float(answer.headers["x-cascade-cost-usd"]),
        steps=int(answer.headers["x-cascade-steps"]),
        score=recorded.score,
        top_cost=costs["cost"](top, top_key),
        top_score=top.score,
        text_ok=text == recorded.text,
        rated=rated,
    )
    if rated:
        fb = client.post(
            f"{url}/v1/feedback",
            json={"run_id": run.run_id, "score": run.score},
            headers=headers,
            timeout=60,
        )
        if fb.status_code != 200:
            raise SystemExit(f"error: feedback on {row.id}: {fb.status_code} {fb.text}")
    return run


def wait_for_ledger(db: Path, upstream: MockLLMServer, runs: int, timeout: float = 120) -> None:
    """Until the ledger holds ``runs`` runs, no step is pending and the upstream is quiet:
    shadow calls run after the answer is sent, and calibration must see their labels."""
    deadline = time.monotonic() + timeout
    seen, quiet_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        count = len(upstream.requests)
        if count != seen:
            seen, quiet_since = count, time.monotonic()
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as con:
            (have,) = con.execute("SELECT COUNT(*) FROM runs").fetchone()
            (pending,) = con.execute(
                "SELECT COUNT(*) FROM steps WHERE status = 'pending'"
            ).fetchone()
        if have >= runs and pending == 0 and time.monotonic() - quiet_since > 0.5:
            return
        time.sleep(0.1)
    raise SystemExit(f"error: the ledger did not settle ({have}/{runs} runs, {pending} pending)")


def ledger_checks(
    db: Path,
    runs: Sequence[Run],
    rows: dict[str, ReplayRecord],
    keys: dict[str, str],
    costs: dict[str, Any],
) -> dict[str, Any]:
    """Shadow cost of these runs, and each run's cost against the recordings it called."""
    by_run = {r.run_id: r for r in runs}
    shadow = 0.0
    shadowed: set[str] = set()
    called: dict[str, float] = dict.fromkeys(by_run, 0.0)
    header_vs_ledger = 0.0
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        marks = ",".join("?" * len(by_run))
        for run_id, model, decision, cost in con.execute(
            f"SELECT run_id, model, decision, cost_usd FROM steps WHERE run_id IN ({marks})",
            list(by_run),
        ):
            row = rows[by_run[run_id].id]
            if decision == "shadow":
                shadow += cost
                shadowed.add(run_id)
            elif decision != "skip":  # a rung the router skipped was never called
                called[run_id] += costs["cost"](row.responses[keys[model]], model)
        for run_id, cost in con.execute(
            f"SELECT run_id, cost_usd FROM runs WHERE run_id IN ({marks})", list(by_run)
        ):
            header_vs_ledger = max(header_vs_ledger, abs(cost - by_run[run_id].cost))
    return {
        "shadow_cost": shadow,
        "shadowed_runs": len(shadowed),
        "max_abs_cost_error_vs_recorded": max(abs(called[r.run_id] - r.cost) for r in runs),
        "max_abs_cost_error_header_vs_ledger": header_vs_ledger,
    }


# ---------------------------------------------------------------- calibration


@dataclass
class Calibration:
    after: int  # queries in the ledger when it ran
    status: str  # deployed | top-only | failed
    labelled: int | None = None
    scheme: str | None = None
    ladder: list[str] = field(default_factory=list)
    thresholds: dict[str, Any] = field(default_factory=dict)
    train_cost_ratio: float | None = None
    train_quality_ratio: float | None = None
    guarantee: str | None = None
    message: str = ""
    seconds: float = 0.0
    reload: str | None = None


def calibrate(
    config: Path, served: Path, out: Path, target: float, delta: float, after: int
) -> Calibration:
    report = out.with_suffix(".json")
    command = [
        sys.executable,
        "-m",
        "cascade.cli",
        "calibrate",
        str(config),
        "--from-ledger",
        "--target-quality",
        str(target),
        "--delta",
        str(delta),
        "--out",
        str(out),
        "--json",
        str(report),
    ]
    started = time.monotonic()
    # cwd = the config's folder: calibrate replays its result on train with relative model
    # files (quality_model.model of an earlier calibration) resolved against the cwd
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        cwd=served.parent,
        env={**os.environ, **ENV, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    seconds = time.monotonic() - started
    log = done.stderr + done.stdout
    out.with_suffix(".log").write_text(log)
    labelled = re.search(r"(\d[\d,]*) labelled runs? of task", log)
    scheme = re.search(r"^scheme: (\w+)", log, re.M)
    cal = Calibration(
        after=after,
        status="failed",
        labelled=int(labelled.group(1).replace(",", "")) if labelled else None,
        scheme=scheme.group(1) if scheme else None,
        seconds=round(seconds, 2),
    )
    if done.returncode != 0 or not out.exists():
        last = [line for line in log.splitlines() if line.strip()]
        cal.message = last[-1] if last else f"exit code {done.returncode}"
        return cal
    result = json.loads(report.read_text())
    cal.ladder = list(result.get("ladder") or [])
    cal.thresholds = result.get("thresholds") or {}
    cal.message = result.get("message", "")
    cal.guarantee = (
        (result.get("guarantee") or {}).get("sentence")
        if isinstance(result.get("guarantee"), dict)
        else result.get("guarantee")
    )
    train = result.get("train") or {}
    top = (train.get("baselines") or {}).get("always_top") or {}
    if train and top:
        cal.train_cost_ratio = _ratio(train.get("cost_per_query"), top.get("cost_per_query"))
        cal.train_quality_ratio = _ratio(train.get("quality"), top.get("quality"))
    cal.status = "top-only" if len(cal.ladder) <= 1 else "deployed"
    return cal


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


# ---------------------------------------------------------------- the loop


def loop_config(
    source: Path,
    task: str,
    upstream: MockLLMServer,
    ledger: Path,
    shadow_rate: float,
    priced_by_cost: bool,
) -> dict[str, Any]:
    data = yaml.safe_load(source.read_text())
    data["providers"] = {
        "upstream": {
            "type": "openai",
            "base_url": upstream.openai_url,
            "api_key_env": "LOOP_UPSTREAM_KEY",
        }
    }
    for model in data["models"].values():
        model["provider"] = "upstream"
        if priced_by_cost:
            model["price"] = {"input": TOKEN_PRICE, "output": 0.0}
    data["ledger"] = {"path": str(ledger)}
    data["logging"] = {"content": True}
    data["tasks"][task]["shadow_rate"] = shadow_rate
    data["tasks"][task]["shadow_labels"] = True
    # the benchmark sends a few requests at once: no sampled shadow may be skipped for room
    data["shadow_max_in_flight"] = 64
    data["server"] = {
        "host": "127.0.0.1",
        "api_keys_env": "LOOP_CLIENT_KEYS",
        "admin_keys_env": "LOOP_ADMIN_KEYS",
        "feedback_rpm": 1_000_000,  # a benchmark client rates hundreds of runs a minute
    }
    return data


def summarize(runs: Sequence[Run], shadow_cost: float, first: str) -> dict[str, Any]:
    n = len(runs)
    cost = sum(r.cost for r in runs) / n
    top_cost = sum(r.top_cost for r in runs) / n
    quality = sum(r.score for r in runs) / n
    top_quality = sum(r.top_score for r in runs) / n
    return {
        "n": n,
        "cost_per_query": cost,
        "shadow_cost_per_query": shadow_cost / n,
        "top_cost_per_query": top_cost,
        "cost_ratio": cost / top_cost,
        "cost_ratio_with_shadow": (cost + shadow_cost / n) / top_cost,
        "quality": quality,
        "top_quality": top_quality,
        "quality_ratio": quality / top_quality if top_quality else None,
        # answered above the ladder's first rung: escalated, or routed past it
        "escalation": sum(r.model != first for r in runs) / n,
        "rated": sum(r.rated for r in runs),
    }


def run_loop(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    ds = DATASETS[args.dataset]
    rows = load_rows(ds, args.data, work)
    order = list(rows)
    random.Random(args.seed).shuffle(order)
    if args.limit:
        order = order[: args.limit]
    by_id = {r.id: r for r in rows}
    source = ROOT / ds.config
    base = yaml.safe_load(source.read_text())
    keys = {k: m["name"] for k, m in base["models"].items()}
    ladder = [r if isinstance(r, str) else r["model"] for r in base["tasks"][ds.task]["ladder"]]
    top_key = ladder[-1]
    priced_by_cost = ds.source == "file"
    prices = {k: m.get("price", {}) for k, m in base["models"].items()}

    def recorded_cost(response: RecordedResponse, key: str) -> float:
        if priced_by_cost or response.cost_usd is not None:
            return response.cost_usd or 0.0
        p = prices[key]
        return (
            (response.input_tokens or 0) * p["input"] + (response.output_tokens or 0) * p["output"]
        ) / 1e6

    costs = {"cost": recorded_cost}
    if priced_by_cost:  # what the gateway bills: whole tokens at TOKEN_PRICE
        costs["cost"] = lambda response, key: (
            round((response.cost_usd or 0.0) / PER_TOKEN) * PER_TOKEN
        )
    recorded = Recorded(rows, priced_by_cost)
    rng = random.Random(args.seed + 1)
    rated = [rng.random() < args.feedback_share for _ in order]
    served = work / "served.yaml"
    ledger = work / "ledger.sqlite"
    rounds: list[dict[str, Any]] = []
    calibrations: list[Calibration] = []
    all_runs: list[Run] = []
    shadow_total = 0.0
    checks = {
        "text_mismatches": 0,
        "max_abs_cost_error_vs_recorded": 0.0,
        "max_abs_cost_error_header_vs_ledger": 0.0,
    }
    started = time.monotonic()
    with MockLLMServer(responder=recorded.reply) as upstream:
        config = loop_config(source, ds.task, upstream, ledger, args.shadow_rate, priced_by_cost)
        served.write_text(yaml.safe_dump(config, sort_keys=False))
        shutil.copy(served, work / "round0.yaml")
        gateway = Gateway(served, work / "serve.log")
        gateway.start()
        deployed = {"label": "hand-set", "calibration": None}
        try:
            with httpx2.Client() as client, ThreadPoolExecutor(args.concurrency) as pool:
                for start in range(0, len(order), args.rounds_of):
                    batch = order[start : start + args.rounds_of]
                    runs = list(
                        pool.map(
                            lambda i: send(
                                client,
                                gateway.url,
                                ds.task,
                                order[i],
                                keys,
                                top_key,
                                costs,
                                rated[i],
                            ),
                            range(start, start + len(batch)),
                        )
                    )
                    done = start + len(batch)
                    wait_for_ledger(ledger, upstream, done)
                    found = ledger_checks(ledger, runs, by_id, keys, costs)
                    shadow_total += found["shadow_cost"]
                    checks["text_mismatches"] += sum(not r.text_ok for r in runs)
                    for name in (
                        "max_abs_cost_error_vs_recorded",
                        "max_abs_cost_error_header_vs_ledger",
                    ):
                        checks[name] = max(checks[name], found[name])
                    all_runs += runs
                    summary = summarize(runs, found["shadow_cost"], ladder[0])
                    rounds.append(
                        {
                            "round": len(rounds) + 1,
                            "queries": [start, done],
                            "config": deployed["label"],
                            "calibration": deployed["calibration"],
                            "shadowed_runs": found["shadowed_runs"],
                            "answered_by": {
                                k: sum(r.model == k for r in runs)
                                for k in keys
                                if any(r.model == k for r in runs)
                            },
                            **summary,
                        }
                    )
                    _print_round(rounds[-1], calibrations, first=start == 0)
                    if done >= len(order):
                        break
                    out = work / f"round{len(rounds)}.yaml"
                    base = served if args.calibrate == "served" else work / "round0.yaml"
                    cal = calibrate(base, served, out, args.target, args.delta, done)
                    if cal.status == "deployed":
                        shutil.copy(out, served)
                        cal.reload = gateway.reload(args.reload)
                        deployed = {
                            "label": f"calibrated after {done}",
                            "calibration": len(calibrations),
                        }
                    calibrations.append(cal)
                    _print_calibration(cal)
        finally:
            gateway.stop()
        checks["upstream_misses"] = recorded.misses
    total = summarize(all_runs, shadow_total, ladder[0])
    return {
        "rounds": rounds,
        "calibrations": [asdict(c) for c in calibrations],
        "total": total,
        "checks": checks,
        "gateway_starts": gateway.starts,
        "seconds": round(time.monotonic() - started, 1),
        "ladder": ladder,
        "models": keys,
        # per-query recorded scores of held-aside data stay out of the repo
        "runs": [] if ds.held_aside else [asdict(r) for r in all_runs],
    }


# ---------------------------------------------------------------- output


HEADER = (
    f"{'round':>5} {'queries':>9} {'labelled':>8} {'scheme':>8} {'cost/q':>10} {'top/q':>10} "
    f"{'cost/top':>8} {'+shadow':>8} {'quality':>7} {'top q':>7} {'q/top':>6} {'esc':>6}  config"
)


def _print_round(r: dict[str, Any], cals: Sequence[Calibration], *, first: bool) -> None:
    if first:
        print(HEADER)
    cal = cals[r["calibration"]] if r["calibration"] is not None else None
    labelled = str(cal.labelled) if cal and cal.labelled is not None else "-"
    scheme = cal.scheme if cal and cal.scheme else "-"
    print(
        f"{r['round']:>5} {r['queries'][1]:>9} {labelled:>8} {scheme:>8} "
        f"{r['cost_per_query']:>10.6f} {r['top_cost_per_query']:>10.6f} "
        f"{r['cost_ratio']:>8.3f} {r['cost_ratio_with_shadow']:>8.3f} {r['quality']:>7.3f} "
        f"{r['top_quality']:>7.3f} {r['quality_ratio']:>6.3f} {r['escalation']:>6.1%}  "
        f"{r['config']}",
        flush=True,
    )


def _print_calibration(cal: Calibration) -> None:
    what = {
        "deployed": f"deployed ({cal.reload}): ladder {' -> '.join(cal.ladder)}, "
        f"train cost/top {_fmt(cal.train_cost_ratio)}, "
        f"q/top {_fmt(cal.train_quality_ratio)}",
        "top-only": "kept the top rung alone: not deployed, the served config stays",
        "failed": f"failed, the served config stays: {cal.message}",
    }[cal.status]
    print(
        f"      calibrate after {cal.after} queries "
        f"({cal.labelled if cal.labelled is not None else '?'} labelled, "
        f"{cal.scheme or '?'}, {cal.seconds:.1f} s): {what}",
        flush=True,
    )


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def plot(result: dict[str, Any], path: Path, target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = result["rounds"]
    x = [r["queries"][1] for r in rounds]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(x, [r["cost_ratio"] for r in rounds], "o-", label="cost / always-top")
    ax.plot(
        x,
        [r["cost_ratio_with_shadow"] for r in rounds],
        "o:",
        label="cost / always-top, shadow calls included",
    )
    ax.plot(x, [r["quality_ratio"] for r in rounds], "s-", label="quality / always-top")
    ax.axhline(target, color="grey", ls="--", lw=1, label=f"target R = {target:g}")
    ax.set_xlabel("queries served (end of round)")
    ax.set_ylim(0, 1.1)
    ax.set_title(
        f"loop: {result['args']['dataset']}, recalibrated every "
        f"{result['args']['rounds_of']} queries"
    )
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="gsm8k", choices=sorted(DATASETS))
    parser.add_argument("--rounds-of", type=int, default=250, help="queries between calibrations")
    parser.add_argument("--target", type=float, default=0.9, help="--target-quality R")
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument("--shadow-rate", type=float, default=0.15)
    parser.add_argument(
        "--feedback-share",
        type=float,
        default=0.5,
        help="share of runs the client rates with POST /v1/feedback",
    )
    parser.add_argument("--seed", type=int, default=0, help="query order and who rates")
    parser.add_argument("--limit", type=int, default=None, help="only the first N queries")
    parser.add_argument("--concurrency", type=int, default=8, help="requests at once")
    parser.add_argument(
        "--calibrate",
        default="base",
        choices=["base", "served"],
        help="the CONFIG calibrated each round: base, the hand-set config with the loop's "
        "settings (its evaluators are the candidates every time); served, the config in "
        "service (after the first round, an earlier calibration's quality_model)",
    )
    parser.add_argument("--reload", default="auto", choices=["auto", "endpoint", "restart"])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument(
        "--work",
        type=Path,
        default=None,
        help="keep the config, ledger and calibrations here (default: a temp dir)",
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    parser.add_argument("--plot", type=Path, default=None, help="PNG file to write")
    args = parser.parse_args(argv)
    if not args.data.exists():
        parser.error(f"--data {args.data} does not exist")
    print(
        f"loop: {args.dataset}, rounds of {args.rounds_of}, R = {args.target}, delta = "
        f"{args.delta}, shadow_rate {args.shadow_rate}, {args.feedback_share:.0%} of runs "
        f"rated, seed {args.seed}",
        flush=True,
    )
    if args.work:
        if args.work.exists():
            shutil.rmtree(args.work)  # a fresh ledger: the loop starts from nothing
        args.work.mkdir(parents=True)
        result = run_loop(args, args.work)
    else:
        with tempfile.TemporaryDirectory(prefix="cascade-loop-") as folder:
            result = run_loop(args, Path(folder))
    result["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    result["machine"] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    t = result["total"]
    c = result["checks"]
    print(
        f"all {t['n']} queries: cost/top {t['cost_ratio']:.3f} ({t['cost_ratio_with_shadow']:.3f}"
        f" with shadow calls), quality/top {t['quality_ratio']:.3f}, {t['rated']} rated; "
        f"{result['seconds']:.0f} s, gateway started {result['gateway_starts']} time(s)"
    )
    print(
        f"checks: {c['text_mismatches']} answers differ from the recording, cost vs recorded "
        f"max error {c['max_abs_cost_error_vs_recorded']:.2e} USD, header vs ledger "
        f"{c['max_abs_cost_error_header_vs_ledger']:.2e} USD, "
        f"{c['upstream_misses']} upstream misses"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")
    if args.plot:
        try:
            plot(result, args.plot, args.target)
            print(f"wrote {args.plot}")
        except ImportError:
            print("no matplotlib: no plot")
    return 0


if __name__ == "__main__":
    sys.exit(main())
