"""Issue 22, item 14: a gateway worker killed with SIGKILL leaves no process behind.

Each worker parses large bodies in a process of its own (``BodyParser``), which brings
multiprocessing's resource tracker with it. Both used to outlive a killed worker under PID 1
(3 kills left 186 MB); they must die with it. The worker here is built exactly as
``cascade serve --workers N`` builds one (``workers.worker_app``), in a real process.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cascade.gateway.workers import CONFIG_ENV
from tests.conftest import FAKE_ANTHROPIC_KEY, FAKE_OPENAI_KEY
from tests.gateway.test_attacks import NOWHERE, attack_config

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")

WORKER = """
import sys
from cascade.gateway.workers import worker_app
app = worker_app()
print("ready", flush=True)
sys.stdin.read()  # held open by the test: the worker lives until it is killed
"""


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()  # state, ppid, ...


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")  # a zombie has exited


def exited(pid: int) -> None:
    """Block until ``pid`` (not our child, so no waitpid) exits: its pidfd becomes readable
    then. The 30 s is a bound on a failing test, not a measured time."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # already gone
    try:
        select.select([fd], [], [], 30)
    finally:
        os.close(fd)


def test_14_killed_worker_leaves_no_processes(tmp_path: Path) -> None:
    """kill -9 of a worker: its body-parser process and resource tracker exit too."""
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(attack_config(NOWHERE, tmp_path / "l.sqlite")))
    env = {**os.environ, CONFIG_ENV: str(config), "OPENAI_API_KEY": FAKE_OPENAI_KEY,
           "ANTHROPIC_API_KEY": FAKE_ANTHROPIC_KEY,
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    worker = subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                              text=True)
    kids: list[int] = []
    try:
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == "ready"
        kids = children(worker.pid)
        assert len(kids) == 2  # the body parser and multiprocessing's resource tracker
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        for kid in kids:
            exited(kid)
        assert [k for k in kids if alive(k)] == []
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        for stream in (worker.stdin, worker.stdout):
            if stream is not None:
                stream.close()
        for kid in kids:
            if alive(kid):
                os.kill(kid, signal.SIGKILL)
