"""One cascadeflow call per line read from stdin, its wall time in ms written back.

Run by ``engine_overhead.py --cascadeflow-python VENV/bin/python`` inside cascadeflow's own
virtualenv (``pip install "cascadeflow[openai]"``), so the engine's dependencies and
cascadeflow's never share one environment. One model (provider ``vllm``, the loopback
upstream's base_url), so every query is answered directly, as the engine's one-rung task is.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time


def main() -> None:
    logging.disable(logging.WARNING)
    from cascadeflow import CascadeAgent, ModelConfig

    url = sys.argv[1]
    agent = CascadeAgent(models=[ModelConfig(name="bench-model", provider="vllm", cost=0.0,
                                             base_url=url, api_key="bench")])
    loop = asyncio.new_event_loop()
    for _line in sys.stdin:
        started = time.perf_counter()
        result = loop.run_until_complete(agent.run("What are your opening hours?", max_tokens=50))
        elapsed = (time.perf_counter() - started) * 1000
        assert result.content, result
        sys.stdout.write(f"{elapsed}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
