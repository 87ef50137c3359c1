"""Threads for the sync path's blocking provider calls, kept for reuse.

A sync call runs on a thread of its own so that ``timeout_s`` bounds the call as a whole (the
SDKs' sync clients only bound each read). Starting a thread costs about 0.14 ms on a small VM,
a third of the sync path's own time, so a thread that finished its call waits ``IDLE_S`` for the
next one. A call abandoned at its deadline keeps its thread until the SDK returns (at its next
read timeout or byte); the next call takes another idle thread or starts one, so nothing ever
waits behind a hung call.
"""

from __future__ import annotations

import contextvars
import os
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["run_within"]

T = TypeVar("T")

# How long a finished thread waits for another call before it ends.
IDLE_S = 30.0


class _Job:
    __slots__ = ("call", "context", "done", "error", "value")

    def __init__(self, call: Callable[[], Any]):
        self.call = call
        self.context = contextvars.copy_context()  # the caller's run, for judges' steps
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.value = self.context.run(self.call)
        except BaseException as exc:  # handed to the caller's thread
            self.error = exc
        finally:
            self.done.set()


class _Worker:
    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        threading.Thread(target=self._loop, name="cascade-call", daemon=True).start()

    def _loop(self) -> None:
        while True:
            try:
                job = self.jobs.get(timeout=IDLE_S)
            except queue.Empty:
                with _LOCK:
                    if self in _IDLE:
                        _IDLE.remove(self)
                        return
                continue  # taken from the idle list just now: its job is on the way
            job.run()
            with _LOCK:
                _IDLE.append(self)


_LOCK = threading.Lock()
_IDLE: list[_Worker] = []


def _forget_threads() -> None:
    # After fork() the child has none of the parent's threads, only their idle entries.
    global _LOCK
    _LOCK = threading.Lock()
    _IDLE.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_threads)


def run_within(timeout: float, call: Callable[[], T]) -> T:
    """Run a blocking call on a call thread and wait at most ``timeout`` seconds for it.

    Raises:
        TimeoutError: the call did not finish in time (it goes on, and its result is dropped).
    """
    job = _Job(call)
    with _LOCK:
        worker = _IDLE.pop() if _IDLE else None
    (worker or _Worker()).jobs.put(job)
    if not job.done.wait(timeout):
        raise TimeoutError
    if job.error is not None:
        raise job.error
    result: T = job.value
    return result
