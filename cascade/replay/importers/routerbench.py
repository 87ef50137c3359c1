"""RouterBench (ARC-Challenge, MBPP, Winogrande): 11 models with answer text, cost and correctness.

Source: the CSV re-export of RouterBench by the RouterDC authors, github.com/shuhao02/RouterDC at
commit 0e63989c5bf4363330b8a4616386e3f7f116d9f8, folder ``datasets/routerbench_zs`` (no license
declared: research and internal use only). Default URL::

    https://raw.githubusercontent.com/shuhao02/RouterDC/0e63989c5bf4363330b8a4616386e3f7f116d9f8/datasets/routerbench_zs

Files read: ``{arc_challenge,mbpp,winograde}_{train,test}.csv`` (``winograde`` is upstream's
spelling). The original dataset is ``withmartian/routerbench`` (Hu et al., arXiv 2403.12031).

Conversion:
- The given train/test files are the split; ``seed`` is not used.
- ``id`` is RouterBench's ``sample_id``; ``task`` is ``arc``, ``mbpp`` or ``winogrande``.
- Rows with an empty score for any model are dropped and counted as skipped. In ARC they come in
  pairs sharing a ``sample_id``: one row lists the prompt twice with doubled costs and only
  gpt-3.5's score, the other lacks gpt-3.5's score. Neither is a complete, trustworthy record.
- A ``sample_id`` left in both train and test is kept in test and dropped from train (counted
  as skipped); a repeat within one file keeps the first row.
- Prompt and answer text are the single string inside the stringified Python list
  (``ast.literal_eval``), or the raw cell if it is not one.
- ``cost_usd`` is the recorded ``total_cost``. Tokens are not recorded: for models whose input
  and output prices are equal the total is ``total_cost / price``, with ceil(chars/4) of the
  answer as output and the rest as input; for the others both are ceil(chars/4) estimates.
"""

from __future__ import annotations

import ast
from pathlib import Path

from cascade.errors import DatasetError
from cascade.providers.dataset import RecordedResponse, ReplayMessage, ReplayRecord
from cascade.replay.importers.base import (
    Converted,
    Importer,
    Split,
    est_tokens,
    fmt_prices,
    need,
    read_csv,
)

NAME = "routerbench"
# RouterBench's routers/common.py writes these "per 10M", but total_cost matches per 1M.
PRICES: dict[str, tuple[float, float]] = {
    "mistralai/mistral-7b-chat": (0.2, 0.2),
    "WizardLM/WizardLM-13B-V1.2": (0.3, 0.3),
    "mistralai/mixtral-8x7b-chat": (0.6, 0.6),
    "meta/code-llama-instruct-34b-chat": (0.776, 0.776),
    "zero-one-ai/Yi-34B-Chat": (0.8, 0.8),
    "meta/llama-2-70b-chat": (0.9, 0.9),
    "claude-instant-v1": (0.8, 2.4),
    "gpt-3.5-turbo-1106": (1.0, 2.0),
    "claude-v1": (8.0, 24.0),
    "claude-v2": (8.0, 24.0),
    "gpt-4-1106-preview": (10.0, 30.0),
}
MODELS = tuple(PRICES)
TASKS = {"arc_challenge": "arc", "mbpp": "mbpp", "winograde": "winogrande"}
DEFAULT_URL = (
    "https://raw.githubusercontent.com/shuhao02/RouterDC/"
    "0e63989c5bf4363330b8a4616386e3f7f116d9f8/datasets/routerbench_zs"
)
FILES = tuple(f"{stem}_{part}.csv" for stem in TASKS for part in ("train", "test"))
_COLUMNS = [
    "",
    "sample_id",
    "prompt",
    *MODELS,
    *(f"{m}|model_response" for m in MODELS),
    *(f"{m}|total_cost" for m in MODELS),
]


def convert(root: Path, *, split: Split, seed: int) -> Converted:
    """Read the RouterBench CSVs at ``root`` into replay records of the requested split.

    ``seed`` is accepted for a uniform signature and unused: the files come split.
    """
    kept: dict[str, list[ReplayRecord]] = {"train": [], "test": []}
    # Per split, so that `skipped` counts only rows of the files the caller asked for.
    unscored = {"train": 0, "test": 0}
    repeats = {"train": 0, "test": 0}
    overlap = 0
    for stem, task in TASKS.items():
        test_ids: set[str] = set()
        for part in ("test", "train"):  # test first: it keeps an id present in both
            path = need(root, f"{stem}_{part}.csv")
            seen: set[str] = set()
            for lineno, row in read_csv(path, _COLUMNS):
                sid = row["sample_id"]
                if any(row[m].strip() == "" for m in MODELS):
                    unscored[part] += 1
                elif sid in seen:
                    repeats[part] += 1
                elif part == "train" and sid in test_ids:
                    overlap += 1
                else:
                    seen.add(sid)
                    kept[part].append(_record(row, task, part, path, lineno))
            if part == "test":
                test_ids = seen

    wanted = ("train", "test") if split == "all" else (split,)
    records = [r for part in wanted for r in kept[part]]
    skipped = sum(unscored[p] + repeats[p] for p in wanted) + (overlap if "train" in wanted else 0)
    unequal = [m for m, (i, o) in PRICES.items() if i != o]
    assumptions = (
        f"{NAME}: dropped rows with an empty score (train {unscored['train']}, test "
        f"{unscored['test']}: ARC sample_ids split over two rows, one listing the prompt twice "
        "with doubled costs); counted in skipped",
        f"{NAME}: a sample_id in both train and test is kept in test only ({overlap} train rows "
        f"dropped); repeats within a file keep the first row "
        f"({repeats['train'] + repeats['test']} dropped)",
        f"{NAME}: split is the given train/test files (seed not used)",
        f"{NAME}: cost_usd = recorded total_cost; tokens for equal-price models = "
        "total_cost/price (output ceil(chars/4), input the rest); for "
        f"{', '.join(unequal)}: ceil(chars/4) of prompt and response",
        f"{NAME}: prices per 1M tokens in/out from RouterBench routers/common.py (written there "
        f"per 10M; total_cost matches per 1M): {fmt_prices(PRICES)}",
    )
    return Converted(records, skipped, MODELS, assumptions)


def _record(row: dict[str, str], task: str, part: str, path: Path, lineno: int) -> ReplayRecord:
    prompt = _unlist(row["prompt"])
    responses = {}
    for model in MODELS:
        try:
            score = float(row[model])
            cost = float(row[f"{model}|total_cost"])
        except ValueError as exc:
            raise DatasetError(f"{path}:{lineno}: {model}: {exc}") from exc
        text = _unlist(row[f"{model}|model_response"])
        input_price, output_price = PRICES[model]
        output_tokens = est_tokens(text)
        if input_price == output_price:
            total = round(cost * 1_000_000 / input_price)
            output_tokens = min(output_tokens, total)
            input_tokens = total - output_tokens
        else:
            input_tokens = est_tokens(prompt)
        try:
            responses[model] = RecordedResponse(
                text=text,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                cost_usd=cost,
                score=score,
            )
        except ValueError as exc:
            raise DatasetError(f"{path}:{lineno}: {model}: {exc}") from exc
    return ReplayRecord(
        id=row["sample_id"],
        task=task,
        messages=(ReplayMessage(role="user", content=prompt),),
        responses=responses,
        meta={"split": part, "row": int(row[""]) if row[""].isdigit() else row[""]},
    )


def _unlist(cell: str) -> str:
    """The one string in a stringified ``['...']``, else the cell as it is."""
    try:
        value = ast.literal_eval(cell)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return cell
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        return value[0]
    return cell


IMPORTER = Importer(name=NAME, files=FILES, default_url=DEFAULT_URL, prices=PRICES, convert=convert)
