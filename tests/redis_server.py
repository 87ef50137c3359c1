"""Redis for tests: the machine's server with a key prefix of each test's own, or a server of
the test's own (``OwnRedis``) that it may stop, freeze and start again on the same port.

The machine's Redis runs at 127.0.0.1:6379 here and in CI; a test never stops it.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator

import pytest
import redis

MACHINE_URL = "redis://127.0.0.1:6379/0"
URL_ENV = "CASCADE_TEST_REDIS_URL"


@pytest.fixture
def redis_prefix(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A key prefix of this test's own on the machine's Redis (its URL in ``URL_ENV``); the
    test's keys are deleted afterwards."""
    monkeypatch.setenv(URL_ENV, MACHINE_URL)
    prefix = f"cascade-test-{uuid.uuid4().hex[:12]}:"
    yield prefix
    with redis.Redis.from_url(MACHINE_URL) as client:
        keys = list(client.scan_iter(f"{prefix}*"))
        if keys:
            client.delete(*keys)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OwnRedis:
    """A ``redis-server`` of the test's own, without persistence, on a free port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[str] | None = None
        self._drain: threading.Thread | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is required for this test")
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        # redis-server says when it accepts connections: wait for that line, not for a time.
        # Its output ends (EOF) if it exits instead, e.g. when the port was taken meanwhile.
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if "Ready to accept connections" in line:
                # Keep reading its log, so a full pipe never blocks the server.
                self._drain = threading.Thread(target=self.process.stdout.read, daemon=True)
                self._drain.start()
                return
        self.stop()
        pytest.fail(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            if self._drain is not None:
                self._drain.join(timeout=10)  # the log's end, now that the server is gone
                self._drain = None
            if self.process.stdout is not None:
                self.process.stdout.close()
            self.process = None

    def freeze(self) -> None:
        """SIGSTOP: the server keeps its connections but never answers (a hung Redis)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def __enter__(self) -> OwnRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.thaw()
        self.stop()


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def outage_clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The clock of every Redis ``Outage`` window made during the test (the shared ones too)."""
    from cascade.engine import redis_client

    fake = Clock()
    monkeypatch.setattr(redis_client, "OUTAGES", redis_client.Outages(clock=fake))
    return fake
