"""Gateway overhead: the latency ``cascade serve`` adds over calling the upstream directly.

    python benchmarks/gateway_overhead.py --rates 50 200 --duration 20 --latency-ms 20

Three processes: a loopback upstream (``MockLLMServer``, every answer after a fixed delay), the
gateway (uvicorn + engine with a ledger, bearer auth and metrics, set up as ``cascade serve``
does) and this load generator. Requests are paced open-loop at each rate, to the gateway and
directly to the upstream in alternation (half a period apart), so both paths see the same
machine at the same moment. The generator speaks HTTP/1.1 itself over keep-alive connections:
the same client on both paths, and cheap enough not to compete with the gateway for the CPU.
Latency is timed from each request's scheduled send time, so a generator that falls behind
cannot hide queueing. Added latency at a percentile is the gateway's percentile minus the
direct one. The task's first rung accepts the upstream's answer, so each gateway request makes
exactly one upstream call, like each direct request.

``gateway_minus_inside_provider_ms`` splits the gateway's share: the ledger records each step's
provider-call latency (retry layer, SDK, HTTP and the upstream's delay); what remains is the
client-to-gateway hop plus uvicorn, Starlette, auth, parsing, the engine, the ledger and metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import os
import platform
import socketserver
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import structlog

from cascade.replay.bench import percentile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_peers import LITELLM_KEY, floor_process, start_litellm, wait_ready

KEY = "bench-gateway-key"
ANSWER = "a complete and useful answer"
MESSAGES = [{"role": "user", "content": "What are your opening hours?"}]
_IDLE_S = 2.0  # reuse a keep-alive connection only if it was used this recently


def _upstream(latency_ms: float, urls: Any, stop: Any) -> None:
    """The upstream, in its own process so that it does not share the gateway's GIL."""
    from cascade.testing import MockLLMServer, Reply

    # http.server writes headers and body in two packets; on a keep-alive connection Nagle's
    # algorithm then holds the body until the client's delayed ACK (~40 ms on Linux). A real
    # provider does not do that, so switch Nagle off for this process.
    socketserver.StreamRequestHandler.disable_nagle_algorithm = True
    delay = latency_ms / 1000

    def responder(model: str, body: dict[str, Any]) -> Reply:
        return Reply(ANSWER, delay_s=delay, input_tokens=14)

    with MockLLMServer(responder) as server:
        urls.put((server.openai_url, server.anthropic_url))
        stop.wait()


def _gateway(config: dict[str, Any], server_options: dict[str, str], urls: Any, stop: Any) -> None:
    """The gateway, built the way ``cascade serve`` builds it, logging at warning level."""
    import threading

    from cascade import Cascade
    from cascade.gateway.app import bind, create_app, freeze_heap, url_of, uvicorn_server

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    os.environ["BENCH_GATEWAY_KEYS"] = KEY
    engine = Cascade.from_dict(config)
    app = create_app(engine, api_keys_env="BENCH_GATEWAY_KEYS")
    sock = bind("127.0.0.1", 0)
    server = uvicorn_server(app, **server_options)
    threading.Thread(target=lambda: (stop.wait(), setattr(server, "should_exit", True)),
                     daemon=True).start()
    freeze_heap()  # as cascade serve does
    urls.put(url_of(sock))
    server.run(sockets=[sock])
    engine.close()


class _Pool:
    """Keep-alive HTTP/1.1 connections to one server, spoken raw over asyncio streams.

    The load generator must stay light: on 2 cores a full HTTP client costs about as much
    CPU per request as a gateway hop, and a busy generator would add its own queueing to both
    paths. One write per request, the response read by Content-Length.
    """

    def __init__(self, url: str):
        rest = url.split("://", 1)[1]
        hostport, _, prefix = rest.partition("/")
        self.host, port = hostport.rsplit(":", 1)
        self.port = int(port)
        self.prefix = "/" + prefix if prefix else ""
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []

    def encode(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> bytes:
        data = json.dumps(body).encode()
        lines = [f"POST {self.prefix}{path} HTTP/1.1", f"Host: {self.host}:{self.port}",
                 "Content-Type: application/json", f"Content-Length: {len(data)}",
                 *(f"{k}: {v}" for k, v in headers.items())]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + data

    async def send(self, raw: bytes) -> tuple[int, dict[str, str]]:
        # Servers drop idle keep-alive connections (uvicorn after 5 s), so older ones are not
        # reused; a reused one that turns out closed is replaced once.
        while self.idle:
            reader, writer, used = self.idle.pop()
            if time.perf_counter() - used < _IDLE_S:
                try:
                    return await self._exchange(reader, writer, raw)
                except (asyncio.IncompleteReadError, ConnectionError):
                    pass
            writer.close()
        reader, writer = await asyncio.open_connection(self.host, self.port)
        return await self._exchange(reader, writer, raw)

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        raw: bytes) -> tuple[int, dict[str, str]]:
        writer.write(raw)
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        status_line, *header_lines = head.split("\r\n")
        headers = {}
        for line in header_lines:
            if line:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
        await reader.readexactly(int(headers.get("content-length", "0")))
        self.idle.append((reader, writer, time.perf_counter()))
        return int(status_line.split()[1]), headers

    def close(self) -> None:
        for _, writer, _ in self.idle:
            writer.close()


async def _timed(pool: _Pool, raw: bytes, due: float) -> tuple[float, str | None, float]:
    """Wait for the scheduled time, send, and return (latency s from schedule, run id, lag s)."""
    delay = due - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)
    lag = time.perf_counter() - due
    status, headers = await pool.send(raw)
    elapsed = time.perf_counter() - due
    if status != 200:
        raise RuntimeError(f"HTTP {status}")
    return elapsed, headers.get("x-cascade-run-id"), lag


async def _measure(rate: float, duration: float, warmup: float, segment: float,
                   direct_url: str, targets: dict[str, tuple[str, bytes]]) -> dict[str, Any]:
    """Each target in turn for ``segment`` seconds, with the direct path interleaved.

    Targets rotate until each has had ``duration`` measured seconds (after one unmeasured
    ``warmup`` segment each), so slow drifts in the machine's load hit every target alike and
    each target's added latency is taken against the direct requests of its own segments.
    """
    direct = _Pool(direct_url)
    direct_raw = direct.encode("/chat/completions", {
        "model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 64}, {})
    pools = {name: _Pool(url) for name, (url, _) in targets.items()}
    period = 1.0 / rate
    out: dict[str, dict[str, list[Any]]] = {name: {"target": [], "direct": []} for name in targets}
    plan = [(name, warmup, False) for name in targets]
    rounds = max(1, round(duration / segment))
    for _ in range(rounds):
        plan += [(name, duration / rounds, True) for name in targets]
    try:
        for name, seconds, keep in plan:
            raw = targets[name][1]
            start = time.perf_counter() + 0.05
            jobs = []
            for i in range(max(1, int(rate * seconds))):
                due = start + i * period
                jobs.append(asyncio.ensure_future(_timed(pools[name], raw, due)))
                jobs.append(asyncio.ensure_future(_timed(direct, direct_raw, due + period / 2)))
            results = await asyncio.gather(*jobs)
            if keep:
                out[name]["target"] += results[0::2]
                out[name]["direct"] += results[1::2]
    finally:
        direct.close()
        for pool in pools.values():
            pool.close()
    return out


def _ms(values: list[float], q: float) -> float:
    return round(percentile([v * 1000 for v in values], q), 3)


def _steps_latency(ledger: Path | str) -> dict[str, float]:
    """The provider-call latency the ledger recorded for each run."""
    if isinstance(ledger, str):  # a PostgreSQL URL
        import psycopg

        with psycopg.connect(ledger) as conn:
            return dict(conn.execute("SELECT run_id, latency_ms FROM steps").fetchall())
    with sqlite3.connect(ledger) as db:
        return dict(db.execute("SELECT run_id, latency_ms FROM steps"))


def _summary(rate: float, raw: dict[str, Any], ledger: Path | str) -> dict[str, Any]:
    row: dict[str, Any] = {"rate_rps": rate}
    for name, samples in raw.items():
        got_s = [r[0] for r in samples["target"]]
        dr_s = [r[0] for r in samples["direct"]]
        entry: dict[str, Any] = {
            "requests": len(got_s),
            "direct_ms": {"p50": _ms(dr_s, 50), "p99": _ms(dr_s, 99)},
            "proxy_ms": {"p50": _ms(got_s, 50), "p99": _ms(got_s, 99)},
            "added_ms": {"p50": round(_ms(got_s, 50) - _ms(dr_s, 50), 3),
                         "p99": round(_ms(got_s, 99) - _ms(dr_s, 99), 3)},
            "send_lag_ms": _ms([r[2] for r in samples["target"] + samples["direct"]], 99),
        }
        if name == "gateway":
            inside = _steps_latency(ledger)
            run_ids = [r[1] for r in samples["target"]]
            own = [g * 1000 - inside[rid] for g, rid in zip(got_s, run_ids, strict=True)
                   if rid in inside]
            entry["minus_inside_provider_ms"] = {
                "p50": round(percentile(own, 50), 3), "p99": round(percentile(own, 99), 3)}
        row[name] = entry
    for peer in ("litellm", "floor"):
        if peer in row and "gateway" in row:
            ours, theirs = row["gateway"]["added_ms"], row[peer]["added_ms"]
            row[f"gateway_over_{peer}_added"] = {
                q: round(ours[q] / theirs[q], 3) if theirs[q] > 0 else None for q in ours}
    return row


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _litellm_version(python: str | None) -> str | None:
    if not python:
        return None
    import subprocess

    code = "import importlib.metadata as m; print(m.version('litellm'))"
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, check=False)
    return done.stdout.strip() or None


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", type=float, nargs="+", default=[50.0, 200.0],
                        help="requests per second on each path")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per rate")
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="unmeasured seconds per rate and proxy")
    parser.add_argument("--segment", type=float, default=5.0,
                        help="seconds each proxy gets in turn before the next one's turn")
    parser.add_argument("--no-floor", action="store_true",
                        help="skip the floor (a bare ASGI + httpx2 forwarding proxy)")
    parser.add_argument("--litellm-python", metavar="PATH",
                        help="python of a virtualenv with litellm[proxy]: measure its proxy too")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="the upstream's delay")
    parser.add_argument("--http", default="auto", choices=["auto", "h11", "httptools"],
                        help="uvicorn's HTTP parser (auto: httptools when installed)")
    parser.add_argument("--loop", default="auto", choices=["auto", "asyncio", "uvloop"],
                        help="uvicorn's event loop (auto: uvloop when installed)")
    parser.add_argument("--json", help="also write the report here")
    parser.add_argument("--postgres", metavar="URL",
                        help="use this PostgreSQL ledger (an empty schema) instead of SQLite")
    args = parser.parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "sk-bench")
    os.environ.setdefault("ANTHROPIC_API_KEY", "sk-ant-bench")
    load_before = round(os.getloadavg()[0], 2)  # other work on the box skews the numbers
    ledger: Path | str = args.postgres or Path(tempfile.mkdtemp()) / "ledger.sqlite"
    ctx = multiprocessing.get_context("spawn")
    urls, stop = ctx.Queue(), ctx.Event()
    upstream = ctx.Process(target=_upstream, args=(args.latency_ms, urls, stop), daemon=True)
    upstream.start()
    openai_url, anthropic_url = urls.get(timeout=60)
    config = {
        "providers": {"openai": {"type": "openai", "base_url": openai_url},
                      "anthropic": {"type": "anthropic", "base_url": anthropic_url}},
        "models": {"mini": {"provider": "openai", "name": "gpt-4o-mini",
                            "price": {"input": 0.15, "output": 0.6}},
                   "sonnet": {"provider": "anthropic", "name": "claude-sonnet-4-6",
                              "price": {"input": 3, "output": 15}}},
        "ledger": {"url": ledger} if args.postgres else {"path": str(ledger)},
        "tasks": {"faq": {"ladder": ["mini", "sonnet"],
                          "evaluators": [{"type": "length", "min_words": 3}]}},
    }
    options = {"http": args.http, "loop": args.loop}
    gateway = ctx.Process(target=_gateway, args=(config, options, urls, stop), daemon=True)
    gateway.start()
    gateway_url = urls.get(timeout=60)
    body = {"model": "faq", "messages": MESSAGES, "max_tokens": 64}
    targets = {"gateway": (gateway_url, _Pool(gateway_url).encode(
        "/v1/chat/completions", body, {"Authorization": f"Bearer {KEY}"}))}
    children: list[Any] = [gateway]
    litellm = None
    try:
        if not args.no_floor:
            floor = ctx.Process(target=floor_process, args=(openai_url, KEY, options, urls, stop),
                                daemon=True)
            floor.start()
            children.append(floor)
            floor_url = urls.get(timeout=60)
            targets["floor"] = (floor_url, _Pool(floor_url).encode(
                "/v1/chat/completions", body, {"Authorization": f"Bearer {KEY}"}))
        if args.litellm_python:
            port = _free_port()
            litellm = start_litellm(args.litellm_python, openai_url, port,
                                    Path(tempfile.mkdtemp()))
            litellm_url = f"http://127.0.0.1:{port}"
            wait_ready(f"{litellm_url}/health/liveliness", litellm)
            targets["litellm"] = (litellm_url, _Pool(litellm_url).encode(
                "/v1/chat/completions", body, {"Authorization": f"Bearer {LITELLM_KEY}"}))
        rows = []
        for rate in args.rates:
            load = round(os.getloadavg()[0], 2)
            raw = asyncio.run(_measure(rate, args.duration, args.warmup, args.segment,
                                       openai_url, targets))
            rows.append({**_summary(rate, raw, ledger), "load_avg_1m_before": load})
    finally:
        stop.set()
        if litellm is not None:
            litellm.terminate()
            litellm.wait(timeout=30)
        for child in children:
            child.join(timeout=30)
        upstream.join(timeout=10)
    report = {"machine": {"cpu": _cpu_model(), "cpus": os.cpu_count(),
                          "python": platform.python_version(),
                          "load_avg_1m_before": load_before,
                          "load_avg_1m_after": round(os.getloadavg()[0], 2)},
              "uvicorn": {"http": args.http, "loop": args.loop,
                          "installed": [m for m in ("httptools", "uvloop") if _installed(m)]},
              "litellm": _litellm_version(args.litellm_python),
              "upstream_latency_ms": args.latency_ms, "duration_s": args.duration,
              "segment_s": args.segment,
              "results": rows}
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
