"""RouteLLM's GSM8K recordings: Mixtral-8x7B and GPT-4-1106 on the 1,319 GSM8K test questions.

Source: github.com/lm-sys/RouteLLM at commit 0b64fdafe049e596a3f5657c219329f24af24198, folder
``routellm/evals/gsm8k`` (Apache-2.0; GSM8K questions MIT). Default URL::

    https://raw.githubusercontent.com/lm-sys/RouteLLM/0b64fdafe049e596a3f5657c219329f24af24198/routellm/evals/gsm8k

A local source may be that folder or its parent (a folder with a ``gsm8k/`` subfolder).
Files read: ``gsm8k_responses.csv`` and ``contaminated_prompts.jsonl``.

Conversion:
- Rows whose prompt equals an ``eval_prompt`` of ``contaminated_prompts.jsonl`` are dropped, as
  RouteLLM's own evaluation does (12 rows), and counted as skipped.
- ``id`` is ``gsm8k-<i>`` with ``i`` the 0-based row, which is the GSM8K test-set index.
- ``score`` is the recorded True/False correctness label as 1.0/0.0; ``task`` is ``math``.
- The source has no token counts: both are ceil(chars / 4) of the prompt and of the response,
  priced with ``PRICES`` (Mixtral at the paper's blended $0.24, GPT-4 at list price).
- The split is a seeded shuffle of the decontaminated rows, 30% train and 70% test.
"""

from __future__ import annotations

from pathlib import Path

from cascade.errors import DatasetError
from cascade.providers.dataset import RecordedResponse, ReplayMessage, ReplayRecord
from cascade.replay.importers.base import (
    TRAIN_FRACTION,
    Converted,
    Importer,
    Split,
    est_tokens,
    fmt_prices,
    need,
    price_cost,
    read_csv,
    read_jsonl,
    seeded_split,
)

NAME = "routellm-gsm8k"
MIXTRAL = "mistralai/Mixtral-8x7B-Instruct-v0.1"
GPT4 = "gpt-4-1106-preview"
MODELS = (MIXTRAL, GPT4)
PRICES: dict[str, tuple[float, float]] = {MIXTRAL: (0.24, 0.24), GPT4: (10.0, 30.0)}
RESPONSES = "gsm8k_responses.csv"
CONTAMINATED = "contaminated_prompts.jsonl"
DEFAULT_URL = (
    "https://raw.githubusercontent.com/lm-sys/RouteLLM/"
    "0b64fdafe049e596a3f5657c219329f24af24198/routellm/evals/gsm8k"
)
_LABELS = {"True": 1.0, "False": 0.0}


def convert(root: Path, *, split: Split, seed: int) -> Converted:
    """Read the GSM8K folder at ``root`` into replay records of the requested split."""
    contaminated = _contaminated(need(root, CONTAMINATED))
    path = need(root, RESPONSES)
    columns = ["prompt", *MODELS, *(f"{m}_response" for m in MODELS)]
    rows: list[tuple[str, dict[str, str], int]] = []
    dropped = 0
    for index, (lineno, row) in enumerate(read_csv(path, columns)):
        if row["prompt"] in contaminated:
            dropped += 1
            continue
        rows.append((f"gsm8k-{index}", row, lineno))

    ids = [rid for rid, _, _ in rows]
    assignment = seeded_split(ids, ["gsm8k"] * len(ids), seed=seed)
    records = [
        _record(rid, row, assignment[rid], path, lineno)
        for rid, row, lineno in rows
        if split in ("all", assignment[rid])
    ]
    assumptions = (
        f"{NAME}: dropped {dropped} contaminated prompts (prompt equals an eval_prompt in "
        f"{CONTAMINATED}), as RouteLLM's evaluation does",
        f"{NAME}: tokens estimated as ceil(chars/4) of the prompt (input) and the response "
        "(output); the source has no token counts",
        f"{NAME}: cost_usd from prices per 1M tokens in/out: {fmt_prices(PRICES)} "
        "(Mixtral blended price from the RouteLLM paper, GPT-4 list price)",
        f"{NAME}: split by seeded shuffle (seed={seed}): {TRAIN_FRACTION:.0%} train / "
        f"{1 - TRAIN_FRACTION:.0%} test of the decontaminated rows; see meta.split",
    )
    return Converted(records, dropped, MODELS, assumptions)


def _contaminated(path: Path) -> set[str]:
    prompts: set[str] = set()
    for lineno, item in read_jsonl(path):
        prompt = item.get("eval_prompt") if isinstance(item, dict) else None
        if not isinstance(prompt, str):
            raise DatasetError(f"{path}:{lineno}: eval_prompt: expected a string")
        prompts.add(prompt)
    return prompts


def _record(rid: str, row: dict[str, str], part: str, path: Path, lineno: int) -> ReplayRecord:
    prompt = row["prompt"]
    responses = {}
    for model in MODELS:
        label = row[model]
        if label not in _LABELS:
            raise DatasetError(f"{path}:{lineno}: {model}: expected True or False, got {label!r}")
        text = row[f"{model}_response"]
        input_tokens, output_tokens = est_tokens(prompt), est_tokens(text)
        responses[model] = RecordedResponse(
            text=text,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=price_cost(input_tokens, output_tokens, PRICES[model]),
            score=_LABELS[label],
        )
    return ReplayRecord(
        id=rid,
        task="math",
        messages=(ReplayMessage(role="user", content=prompt),),
        responses=responses,
        meta={"split": part, "source": "routellm/gsm8k"},
    )


IMPORTER = Importer(
    name=NAME,
    files=(RESPONSES, CONTAMINATED),
    default_url=DEFAULT_URL,
    prices=PRICES,
    convert=convert,
    subdir="gsm8k",
)
