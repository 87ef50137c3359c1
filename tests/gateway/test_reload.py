"""Reloading the served config without a restart: ``POST /admin/reload`` and ``SIGHUP``.

The gateway runs on uvicorn (in a thread, or as a real ``cascade serve`` process) in front of a
loopback upstream; a test rewrites the config file, reloads, and checks what the next requests
are answered with and charged. A run held at the upstream (an event, never a sleep) shows that
requests in flight finish on the config they started with.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml
from starlette.applications import Starlette
from structlog.testing import capture_logs

from cascade import Cascade
from cascade.gateway.app import create_app, running
from cascade.ledger.writer import flush_all
from cascade.testing import MockLLMServer, Reply
from tests.conftest import FAKE_ANTHROPIC_KEY, FAKE_OPENAI_KEY, live_config

KEY, ADMIN = "gw-client-key-1", "gw-admin-key-1"
MINI = "gpt-4o-mini"
GOOD = "We are open from nine to five"  # 7 words: 7 output tokens, 10 input tokens
ASK = {"model": "faq", "messages": [{"role": "user", "content": "When are you open?"}]}
MINI_COST = (10 * 0.15 + 7 * 0.60) / 1e6  # at live_config's price of mini
ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 60  # a safety bound on waits for events, so a broken feature fails instead of hanging


class Upstream:
    """Answers GOOD; while ``hold`` is set, a call to mini waits until ``release`` is set."""

    def __init__(self) -> None:
        self.hold = False
        self.arrived = threading.Event()
        self.release = threading.Event()

    def __call__(self, model: str, body: dict[str, Any]) -> Reply:
        if self.hold and model == MINI:
            self.arrived.set()
            self.release.wait(WAIT_S)
        return Reply(GOOD)


def config(
    mock: MockLLMServer,
    tmp: Path,
    ladder: tuple[str, ...] = ("mini",),
    mini_price: float = 0.15,
    **top: Any,
) -> dict[str, Any]:
    """live_config's ladder mini (or ``ladder``) with its ledger in ``tmp``; ``top`` replaces
    top-level sections (``server``, ``ledger``)."""
    data = live_config(mock, ladder=list(ladder), attempts=1, ledger=str(tmp / "l.sqlite"))
    data["models"]["mini"]["price"]["input"] = mini_price
    return {**data, **top}


@dataclass
class Served:
    url: str
    path: Path  # the config file
    app: Starlette
    server: MockLLMServer
    upstream: Upstream
    tmp: Path

    def write(self, **changes: Any) -> None:
        self.path.write_text(yaml.safe_dump(config(self.server, self.tmp, **changes)))

    def ask(self, key: str = KEY) -> httpx2.Response:
        return httpx2.post(
            f"{self.url}/v1/chat/completions",
            json=ASK,
            timeout=WAIT_S,
            headers={"authorization": f"Bearer {key}"},
        )

    def reload(self, key: str | None = ADMIN) -> httpx2.Response:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return httpx2.post(f"{self.url}/admin/reload", headers=headers, timeout=WAIT_S)

    def owners(self) -> set[str]:
        """The ledger instances open on the ledger file (a closed one deletes its row)."""
        with sqlite3.connect(self.tmp / "l.sqlite") as db:
            return {owner for (owner,) in db.execute("SELECT owner FROM owners")}


@contextmanager
def serve(
    tmp_path: Path, first: dict[str, Any] | None = None, **app_options: Any
) -> Iterator[Served]:
    """The gateway over a config file (ladder mini, and ``first``), owning its engine as
    cascade serve does."""
    upstream = Upstream()
    path = tmp_path / "gateway.yaml"
    options = {"api_keys": [KEY], "admin_keys": [ADMIN], **app_options}
    with MockLLMServer(upstream) as server:
        path.write_text(yaml.safe_dump(config(server, tmp_path, **(first or {}))))
        engine = Cascade.from_yaml(path)
        try:
            app = create_app(engine, close_engine=True, **options)
            with running(app) as url:
                yield Served(url, path, app, server, upstream, tmp_path)
        finally:
            upstream.release.set()
            engine.close()


def settled(app: Starlette) -> None:
    """Wait until the engines that reloads replaced are closed."""
    reloader = app.state.reloader
    asyncio.run_coroutine_threadsafe(reloader.settled(), reloader.loop).result(WAIT_S)


@pytest.mark.usefixtures("keys")
def test_reload_serves_the_new_ladder_to_the_next_requests(tmp_path: Path) -> None:
    """After POST /admin/reload the next request runs the ladder the file now holds."""
    with serve(tmp_path) as gw:
        assert gw.ask().headers["x-cascade-model"] == "mini"
        gw.write(ladder=("sonnet",))
        reply = gw.reload()
        assert reply.status_code == 200, reply.text
        assert reply.json() == {
            "object": "config.reload",
            "reloaded": True,
            "config": str(gw.path),
            "generation": 1,
            "error": None,
            "restart_required": [],
            "workers_signalled": False,
        }
        assert gw.ask().headers["x-cascade-model"] == "sonnet"


@pytest.mark.usefixtures("keys")
def test_reload_charges_the_new_prices(tmp_path: Path) -> None:
    """A model's new price in the file is what the next run is charged."""
    with serve(tmp_path) as gw:
        assert float(gw.ask().headers["x-cascade-cost-usd"]) == pytest.approx(MINI_COST)
        gw.write(mini_price=150.0)
        assert gw.reload().status_code == 200
        expected = (10 * 150.0 + 7 * 0.60) / 1e6
        assert float(gw.ask().headers["x-cascade-cost-usd"]) == pytest.approx(expected)


@pytest.mark.usefixtures("keys")
def test_a_run_in_flight_finishes_on_the_old_config_and_engine(tmp_path: Path) -> None:
    """A run under way during a reload is answered and charged by the old config; its engine
    (and ledger) stays open until that run is done, and is closed then."""
    with serve(tmp_path) as gw:
        first = gw.app.state.gateway.engine
        gw.upstream.hold = True
        answers: list[httpx2.Response] = []
        held = threading.Thread(target=lambda: answers.append(gw.ask()))
        held.start()
        assert gw.upstream.arrived.wait(WAIT_S)
        gw.write(ladder=("sonnet",), mini_price=150.0)
        assert gw.reload().status_code == 200
        assert gw.ask().headers["x-cascade-model"] == "sonnet"  # new requests: the new ladder
        assert first.ledger is not None
        assert first.ledger.owner.owner in gw.owners()  # still open: its run is not done
        gw.upstream.release.set()
        held.join(WAIT_S)
        (answer,) = answers
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-cascade-model"] == "mini"
        assert float(answer.headers["x-cascade-cost-usd"]) == pytest.approx(MINI_COST)
        settled(gw.app)
        assert first.ledger.owner.owner not in gw.owners()  # closed once the run was done
        flush_all()
        with sqlite3.connect(gw.tmp / "l.sqlite") as db:
            steps = db.execute(
                "SELECT model, status FROM steps WHERE run_id = ?",
                (answer.headers["x-cascade-run-id"],),
            ).fetchall()
        assert steps == [("mini", "settled")]


BAD = {
    "unknown model": ({"ladder": ("sonet",)}, "tasks.faq.ladder[0]: unknown model 'sonet'"),
    "ledger cannot open": ({"ledger": {"path": "."}}, "ledger.path: cannot open the ledger"),
}


@pytest.mark.usefixtures("keys")
@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_config_is_refused_and_the_old_one_keeps_serving(tmp_path: Path, case: str) -> None:
    """A config that fails validation, or cannot be built, is refused with its file and key
    path, answered 422 and logged; the gateway serves the config it had."""
    changes, message = BAD[case]
    with serve(tmp_path) as gw, capture_logs() as logs:
        gw.write(**changes)
        reply = gw.reload()
        assert reply.status_code == 422, reply.text
        body = reply.json()
        assert (body["reloaded"], body["generation"]) == (False, 0)
        assert body["error"].startswith(f"{gw.path}: ")
        assert message in body["error"]
        assert gw.ask().headers["x-cascade-model"] == "mini"
    failed = [e for e in logs if e["event"] == "cascade.reload_failed"]
    assert [(e["log_level"], e["error"], e["trigger"]) for e in failed] == [
        ("error", body["error"], "endpoint")
    ]


def test_invalid_yaml_is_refused(tmp_path: Path, keys: None) -> None:
    """A file that is not YAML is refused with the line and column."""
    with serve(tmp_path) as gw:
        gw.path.write_text("tasks: [\n")
        reply = gw.reload()
        assert reply.status_code == 422
        assert reply.json()["error"].startswith(f"{gw.path}: line 2, column 1: invalid YAML")
        assert gw.ask().status_code == 200


@pytest.mark.usefixtures("keys")
@pytest.mark.parametrize(
    ("key", "status", "code"),
    [
        (KEY, 403, "admin_key_required"),
        ("wrong", 401, "invalid_api_key"),
        (None, 401, "invalid_api_key"),
    ],
)
def test_only_an_admin_key_may_reload(
    tmp_path: Path, key: str | None, status: int, code: str
) -> None:
    """A client key gets 403 and a missing or wrong key 401, OpenAI-shaped; nothing reloads."""
    with serve(tmp_path) as gw:
        gw.write(ladder=("sonnet",))
        reply = gw.reload(key)
        assert reply.status_code == status
        assert reply.json()["error"]["code"] == code
        assert set(reply.json()["error"]) == {"message", "type", "param", "code"}
        assert gw.ask().headers["x-cascade-model"] == "mini"


@pytest.mark.usefixtures("keys")
def test_without_admin_keys_no_key_may_reload(tmp_path: Path) -> None:
    """A gateway with no admin keys refuses the endpoint to every key (SIGHUP still works)."""
    with serve(tmp_path, admin_keys=[]) as gw:
        reply = gw.reload(KEY)
        assert reply.status_code == 403
        assert "server.admin_keys_env" in reply.json()["error"]["message"]


@pytest.mark.usefixtures("keys")
def test_listen_settings_wait_for_a_restart_and_the_rest_apply(tmp_path: Path) -> None:
    """A new server.port is reported and not applied; the other server: settings are."""
    with serve(tmp_path) as gw, capture_logs() as logs:
        gw.write(server={"port": 9999, "direct_models": ["sonnet"], "direct_max_cost_usd": 1.0})
        reply = gw.reload()
        assert reply.status_code == 200
        assert reply.json()["restart_required"] == ["server.port"]
        assert gw.app.state.gateway.settings.port is None
        models = httpx2.get(f"{gw.url}/v1/models", headers={"authorization": f"Bearer {KEY}"})
        assert [m["id"] for m in models.json()["data"]] == ["cascade/faq", "sonnet"]
    assert [e["keys"] for e in logs if e["event"] == "cascade.reload_restart_required"] == [
        ["server.port"]
    ]


@pytest.mark.usefixtures("keys")
def test_keys_are_read_again_from_the_variables_the_config_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys from the config's variables are read again; a reload leaving no key is refused."""
    monkeypatch.setenv("GW_KEYS_A", "key-a")
    monkeypatch.setenv("GW_KEYS_B", "key-b")
    monkeypatch.setenv("GW_ADMIN", ADMIN)
    first = {"server": {"api_keys_env": "GW_KEYS_A", "admin_keys_env": "GW_ADMIN"}}
    with serve(tmp_path, first, api_keys=None, admin_keys=None) as gw:
        assert gw.ask("key-a").status_code == 200
        gw.write(server={"api_keys_env": "GW_KEYS_B", "admin_keys_env": "GW_ADMIN"})
        assert gw.reload().status_code == 200
        assert (gw.ask("key-a").status_code, gw.ask("key-b").status_code) == (401, 200)
        gw.write(server={"api_keys_env": "GW_KEYS_UNSET"})
        refused = gw.reload()
        assert refused.status_code == 422
        assert f"{gw.path}: server.api_keys_env: no API keys" in refused.json()["error"]
        assert gw.ask("key-b").status_code == 200


# -- SIGHUP to a real cascade serve -----------------------------------------------------------


@dataclass
class Process:
    proc: subprocess.Popen[str]
    url: str
    lines: queue.Queue[str]

    def events(
        self, name: str, count: int, match: Callable[[dict[str, Any]], bool]
    ) -> list[dict[str, Any]]:
        """Read log lines until ``count`` ``name`` events from distinct processes match."""
        found: dict[int, dict[str, Any]] = {}
        while len(found) < count:
            line = self.lines.get(timeout=WAIT_S)
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if event.get("event") == name and match(event):
                found[event["pid"]] = event
        return list(found.values())

    def models(self, times: int) -> set[str]:
        """The models: keys that answered ``times`` requests on fresh connections."""
        return {
            httpx2.post(
                f"{self.url}/v1/chat/completions",
                json=ASK,
                timeout=WAIT_S,
                headers={"authorization": f"Bearer {KEY}"},
            ).headers["x-cascade-model"]
            for _ in range(times)
        }


@contextmanager
def cascade_serve(
    path: Path, workers: int, extra_env: Mapping[str, str] | None = None
) -> Iterator[Process]:
    """``cascade --log-level info --log-json serve PATH --workers N``, once every process serves
    (``extra_env``: more environment variables for it)."""
    env = {
        **os.environ,
        **(extra_env or {}),
        "GW_KEYS": KEY,
        "GW_ADMIN": ADMIN,
        "OPENAI_API_KEY": FAKE_OPENAI_KEY,
        "ANTHROPIC_API_KEY": FAKE_ANTHROPIC_KEY,
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cascade.cli",
            "--log-level",
            "info",
            "--log-json",
            "serve",
            str(path),
            "--port",
            "0",
            "--workers",
            str(workers),
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
        start_new_session=True,  # its own process group: a failed test kills the workers too
    )
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stderr is not None
    reader = threading.Thread(
        target=lambda: [lines.put(line) for line in proc.stderr or ()], daemon=True
    )
    reader.start()
    try:
        listening = lines.get(timeout=WAIT_S)
        while not listening.startswith("cascade serve: listening on "):
            listening = lines.get(timeout=WAIT_S)
        served = Process(proc, listening.split()[4], lines)
        served.events("cascade.serving", workers, lambda e: True)
        yield served
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=WAIT_S) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        reader.join(WAIT_S)
        proc.stderr.close()


def _serve_file(tmp_path: Path, server: MockLLMServer, ladder: str) -> Path:
    path = tmp_path / "gateway.yaml"
    server_section = {"api_keys_env": "GW_KEYS", "admin_keys_env": "GW_ADMIN"}
    path.write_text(
        yaml.safe_dump(config(server, tmp_path, ladder=(ladder,), server=server_section))
    )
    return path


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_reloads_every_process_of_cascade_serve(tmp_path: Path, workers: int) -> None:
    """SIGHUP to cascade serve reloads the file in each process (each --workers worker too):
    the next requests, whichever process takes them, run the new ladder."""
    with MockLLMServer(lambda model, body: Reply(GOOD)) as server:
        path = _serve_file(tmp_path, server, "mini")
        with cascade_serve(path, workers) as serving:
            assert serving.models(2 * workers) == {"mini"}
            _serve_file(tmp_path, server, "sonnet")
            serving.proc.send_signal(signal.SIGHUP)
            reloaded = serving.events(
                "cascade.reloaded", workers, lambda e: e["trigger"] == "hangup"
            )
            assert {e["generation"] for e in reloaded} == {1}
            assert serving.models(4 * workers) == {"sonnet"}


def test_reload_endpoint_reaches_every_worker(tmp_path: Path) -> None:
    """POST /admin/reload, answered by one worker, makes every worker reload the file."""
    with MockLLMServer(lambda model, body: Reply(GOOD)) as server:
        path = _serve_file(tmp_path, server, "mini")
        with cascade_serve(path, 2) as serving:
            _serve_file(tmp_path, server, "sonnet")
            reply = httpx2.post(
                f"{serving.url}/admin/reload",
                timeout=WAIT_S,
                headers={"authorization": f"Bearer {ADMIN}"},
            )
            assert reply.status_code == 200, reply.text
            assert reply.json()["workers_signalled"] is True
            serving.events("cascade.reloaded", 2, lambda e: e["trigger"] == "hangup")
            assert serving.models(8) == {"sonnet"}
