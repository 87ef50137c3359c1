"""Accuracy of task ``auto``'s classifier: which benchmark did a prompt come from?

Each replay file's queries are labelled by their ``task`` (RouterBench: arc, winogrande, mbpp)
or, with ``NAME=FILE``, by NAME (e.g. ``gsm8k=gsm_train.jsonl``). The classifier is fitted on
the train files with ``cascade.models.task_router.fit_classifier`` (the code ``cascade router fit``
runs) and measured on the held-out test files, twice: on the whole prompt as sent, and on its
last paragraph only (RouterBench prompts start with few-shot examples that name the format,
which makes the whole prompt easy; the last paragraph is the question alone).

Usage:
    python benchmarks/task_routing.py --train rb_train.jsonl gsm8k=gsm_train.jsonl \
        --test rb_test.jsonl gsm8k=gsm_test.jsonl [--json OUT] [--per-class 600]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import Counter, defaultdict
from typing import Any

from cascade.models.features import prompt_text
from cascade.models.task_router import fit_classifier
from cascade.providers.dataset import iter_dataset


def load(specs: list[str]) -> list[tuple[str, str]]:
    out = []
    for spec in specs:
        name, _, path = spec.rpartition("=")
        for record in iter_dataset(path):
            text = prompt_text([m.model_dump() for m in record.messages])
            out.append((text, name or record.task or "?"))
    return out


def last_paragraph(text: str) -> str:
    parts = [p for p in text.strip().split("\n\n") if p.strip()]
    return parts[-1] if parts else text


def measure(train: list[tuple[str, str]], test: list[tuple[str, str]],
            view: Any, buckets: int) -> dict[str, Any]:
    started = time.perf_counter()
    model = fit_classifier([(view(t), k) for t, k in train], buckets=buckets)
    fit_s = time.perf_counter() - started
    confusion: dict[str, Counter[str]] = defaultdict(Counter)
    correct = 0
    for text, task in test:
        probs = model.probabilities(view(text))
        guess = max(probs, key=lambda k: probs[k])
        confusion[task][guess] += 1
        correct += guess == task
    return {
        "accuracy": correct / len(test),
        "n_test": len(test),
        "per_task": {t: c[t] / sum(c.values()) for t, c in sorted(confusion.items())},
        "confusion": {t: dict(c) for t, c in sorted(confusion.items())},
        "fit_s": round(fit_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", nargs="+", required=True)
    parser.add_argument("--test", nargs="+", required=True)
    parser.add_argument("--per-class", type=int, default=600,
                        help="train examples per task at most (seeded sample)")
    parser.add_argument("--buckets", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    train, test = load(args.train), load(args.test)
    rng = random.Random(args.seed)
    by_task: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for item in train:
        by_task[item[1]].append(item)
    sample = [x for items in by_task.values()
              for x in rng.sample(items, min(len(items), args.per_class))]
    results = {
        "train_per_task": {t: min(len(v), args.per_class) for t, v in sorted(by_task.items())},
        "whole_prompt": measure(sample, test, lambda s: s, args.buckets),
        "last_paragraph": measure(sample, test, last_paragraph, args.buckets),
    }
    print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
