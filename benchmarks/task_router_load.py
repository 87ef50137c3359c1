"""The cost of a large task router: loading it, and choosing a task for one ``auto`` request.

    python benchmarks/task_router_load.py --tasks 64 --buckets 65536 --requests 20

Writes a valid classifier of ``--tasks`` x ``--buckets`` weights (6 decimals, as
``cascade router fit`` writes them; 64 x 65,536 is a 34 MB file) and loads it with
``load_task_router``. Then, side by side in one run, it times ``choose(prompt)`` as the router does
it now (the weights converted to an array once, at load) and as it did before issue 22
(``np.asarray(self.weights)`` on every call, reproduced here), over the same prompts. The work
per request runs on the gateway's event loop, so it is what every other client waits.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from cascade.config import parse_config
from cascade.models.task_router import TaskClassifier, features, load_task_router


def old_probabilities(classifier: TaskClassifier, prompt: str) -> dict[str, float]:
    """``TaskClassifier.probabilities`` as it was before issue 22: the lists converted per call."""
    x = features(prompt, classifier.hashing, classifier.char_ngrams)
    w = np.asarray(classifier.weights)
    z = np.asarray(classifier.bias) + (w[:, list(x)] @ np.asarray(list(x.values())) if x else 0.0)
    p = 0.5 * (1.0 + np.tanh(0.5 * z))
    total = float(p.sum()) or 1.0
    return {t: float(v) / total for t, v in zip(classifier.tasks, p, strict=True)}


def write_classifier(path: Path, tasks: int, buckets: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with path.open("w") as out:
        out.write('{"kind": "task_router", "tasks": ')
        out.write(json.dumps([f"t{i}" for i in range(tasks)]))
        out.write(f', "hashing": {{"buckets": {buckets}, "ngrams": 2, "max_chars": 4000}}')
        out.write(', "char_ngrams": [3, 4], "weights": [')
        for i in range(tasks):
            row = np.round(rng.normal(0, 0.05, buckets), 6)
            out.write(("," if i else "") + "[" + ",".join(f"{v:.6f}" for v in row) + "]")
        out.write('], "bias": ' + json.dumps([0.0] * tasks) + "}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=64)
    parser.add_argument("--buckets", type=int, default=65536)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "router.json"
        write_classifier(model, args.tasks, args.buckets, args.seed)
        size = model.stat().st_size
        config = parse_config({
            "providers": {"p": {"type": "openai"}},
            "models": {"m": {"provider": "p", "name": "x", "price": {"input": 1, "output": 1}}},
            "tasks": {f"t{i}": {"ladder": ["m"]} for i in range(args.tasks)},
            "task_router": {"model": model.name},
        })
        started = time.perf_counter()
        router = load_task_router(config, config_path=str(Path(tmp) / "c.yaml"))
        load_s = time.perf_counter() - started
    assert router is not None
    prompts = [f"Question {i}: what is {i} plus {2 * i}, and why does it matter to the user?"
               for i in range(args.requests)]
    timings: dict[str, list[float]] = {"now (converted at load)": [], "before (per call)": []}
    for prompt in prompts:  # interleaved, so both see the same machine load
        started = time.perf_counter()
        new = router.classifier.probabilities(prompt)
        timings["now (converted at load)"].append(time.perf_counter() - started)
        started = time.perf_counter()
        old = old_probabilities(router.classifier, prompt)
        timings["before (per call)"].append(time.perf_counter() - started)
        assert max(abs(new[t] - old[t]) for t in new) < 1e-12  # the same answer
    report: dict[str, Any] = {
        "tasks": args.tasks, "buckets": args.buckets, "file_bytes": size,
        "load_s": round(load_s, 3), "requests": args.requests,
        "loadavg": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "per_request_ms": {k: {"median": round(float(np.median(v)) * 1000, 3),
                               "max": round(max(v) * 1000, 3)} for k, v in timings.items()},
    }
    now = report["per_request_ms"]["now (converted at load)"]["median"]
    before = report["per_request_ms"]["before (per call)"]["median"]
    report["ratio_before_over_now"] = round(before / now, 1)
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
