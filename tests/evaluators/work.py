"""Work counted, not timed, for the evaluators' tests on huge and hostile answers.

``python_lines`` counts the lines of Python a call runs. The count is the same on an idle and on
a loaded machine, so a test can state that a 1 MB answer costs no more Python than a short one,
or stays under the bound its caps imply, where a timing would depend on the machine.

Work inside C (a regular expression, ``json.loads``, ``str`` methods) runs no Python lines and
cannot be counted; ``cpu_watchdog`` is the backstop for it: a regular expression that backtracks
exponentially never finishes, and the watchdog turns that into a failure after a CPU-time
allowance hundreds of times what the call needs. CPU time, not wall-clock time: a process
waiting for a core on a busy machine is not charged. The speed targets themselves (a 1 MB answer
judged in well under a second) are measured in ``benchmarks/evaluator_speed.py``.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, TypeVar

T = TypeVar("T")

LINE_LIMIT = 5_000_000  # over twice what a test needs; a runaway loop stops here, not in minutes
CPU_ALLOWANCE_S = 20.0


class TooMuchWork(AssertionError):
    """The call ran more Python lines, or used more CPU time, than the test allows."""


def python_lines(call: Callable[[], T], *, limit: int = LINE_LIMIT) -> tuple[T, int]:
    """Run ``call()`` and count the lines of Python it executes, in every function it calls.

    Raises:
        TooMuchWork: past ``limit`` lines (raised inside the call, which stops it).
    """
    count = 0

    def on_line(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal count
        if event == "line":
            count += 1
            if count > limit:
                raise TooMuchWork(f"more than {limit:,} lines of Python")
        return on_line

    previous = sys.gettrace()  # coverage's tracer, when it runs
    sys.settrace(lambda frame, event, arg: on_line)
    try:
        result = call()
    finally:
        sys.settrace(previous)
    return result, count


@contextmanager
def cpu_watchdog(seconds: float = CPU_ALLOWANCE_S) -> Iterator[None]:
    """Fail the block once this process has used ``seconds`` of CPU time inside it.

    The regular-expression engine checks for signals as it backtracks, so even a single
    catastrophic ``re`` call is interrupted.

    Raises:
        TooMuchWork: the allowance ran out.
    """

    if not hasattr(signal, "setitimer"):  # Windows: no profiling timer, no watchdog
        yield
        return

    def expire(signum: int, frame: FrameType | None) -> None:
        raise TooMuchWork(f"more than {seconds:g} s of CPU time: exponential or runaway work")

    previous = signal.signal(signal.SIGPROF, expire)
    signal.setitimer(signal.ITIMER_PROF, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)
