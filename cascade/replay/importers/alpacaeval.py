"""AlpacaEval 2: 12 models' answers to the 805 instructions, scored by the GPT-4-Turbo judge.

Source: github.com/tatsu-lab/alpaca_eval at commit cd543a149df89434d8a54582c0151c0b945c3d20
(code Apache-2.0, **data CC BY-NC 4.0**: non-commercial use only). Default URL::

    https://raw.githubusercontent.com/tatsu-lab/alpaca_eval/cd543a149df89434d8a54582c0151c0b945c3d20

Files read, for each model M of ``MODELS``: ``results/M/model_outputs.json`` and (except for the
reference, gpt4_1106_preview) ``results/M/weighted_alpaca_eval_gpt4_turbo/annotations.json``.

Conversion:
- The reference model's ``model_outputs.json`` fixes the instruction order: ``id`` is
  ``alpaca-<i>`` with ``i`` its 0-based position. ``task`` is ``chat``; ``meta.dataset`` is the
  source subset (helpful_base, koala, oasst, selfinstruct, vicuna).
- ``text`` is the model's ``output``; ``score`` is ``preference - 1`` from its annotations,
  matched by instruction: the judge's probability of preferring it over gpt4_1106_preview. The
  reference itself scores 0.5 by definition. A model with no output or no preference for an
  instruction (phi-2 lacks 2) is left out of that record's responses.
- No token counts exist: ceil(chars/4) of the instruction (input) and the output, priced with
  ``PRICES``: list prices for the API models, an assumed hosted price for the open ones.
- The split is a seeded shuffle per ``dataset`` subset, 30% train and 70% test.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

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
    read_json,
    seeded_split,
)

NAME = "alpacaeval"
REFERENCE = "gpt4_1106_preview"
ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"
LIST_PRICES: dict[str, tuple[float, float]] = {
    "gpt-3.5-turbo-1106": (1.0, 2.0),
    "claude-instant-1.2": (0.8, 2.4),
    "claude-2.1": (8.0, 24.0),
    REFERENCE: (10.0, 30.0),
}
# Not in the source: a typical hosted price by size, as SOURCE.md suggests.
ASSUMED_PRICES: dict[str, tuple[float, float]] = {
    "phi-2": (0.1, 0.1),
    "gemma-2b-it": (0.1, 0.1),
    "FuseChat-Llama-3.2-1B-Instruct": (0.1, 0.1),
    "FuseChat-Llama-3.2-3B-Instruct": (0.1, 0.1),
    "gemma-7b-it": (0.2, 0.2),
    "OpenHermes-2.5-Mistral-7B": (0.2, 0.2),
    "FuseChat-Llama-3.1-8B-Instruct": (0.2, 0.2),
    "Qwen-14B-Chat": (0.3, 0.3),
}
PRICES: dict[str, tuple[float, float]] = {**ASSUMED_PRICES, **LIST_PRICES}
MODELS = tuple(PRICES)
DEFAULT_URL = (
    "https://raw.githubusercontent.com/tatsu-lab/alpaca_eval/"
    "cd543a149df89434d8a54582c0151c0b945c3d20"
)


def _outputs_file(model: str) -> str:
    return f"results/{model}/model_outputs.json"


def _annotations_file(model: str) -> str:
    return f"results/{model}/{ANNOTATOR}/annotations.json"


FILES = (
    *(_outputs_file(m) for m in MODELS),
    *(_annotations_file(m) for m in MODELS if m != REFERENCE),
)


def convert(root: Path, *, split: Split, seed: int) -> Converted:
    """Read the AlpacaEval results at ``root`` into replay records of the requested split."""
    reference = _items(need(root, _outputs_file(REFERENCE)), ("instruction", "output", "dataset"))
    instructions = [item["instruction"] for item in reference]
    subsets = [item["dataset"] for item in reference]
    outputs: dict[str, dict[str, Any]] = {}
    scores: dict[str, dict[str, float]] = {}
    for model in MODELS:
        outputs[model] = _by_instruction(root, _outputs_file(model), "output")
        if model == REFERENCE:
            scores[model] = dict.fromkeys(outputs[model], 0.5)
        else:
            rel = _annotations_file(model)
            prefs = _by_instruction(root, rel, "preference")
            scores[model] = {k: _score(v, root / rel) for k, v in prefs.items() if _is_number(v)}

    ids = [f"alpaca-{i}" for i in range(len(instructions))]
    if len(set(instructions)) != len(instructions):
        raise DatasetError(f"{root / _outputs_file(REFERENCE)}: repeated instructions")
    assignment = seeded_split(ids, subsets, seed=seed)
    missing: Counter[str] = Counter()
    empty: Counter[str] = Counter()
    records = []
    for rid, instruction, subset in zip(ids, instructions, subsets, strict=True):
        responses = {}
        for model in MODELS:
            text = outputs[model].get(instruction)
            score = scores[model].get(instruction)
            if not isinstance(text, str) or score is None:
                missing[model] += 1
                continue
            empty[model] += not text.strip()
            input_tokens, output_tokens = est_tokens(instruction), est_tokens(text)
            responses[model] = RecordedResponse(
                text=text,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                cost_usd=price_cost(input_tokens, output_tokens, PRICES[model]),
                score=score,
            )
        if split in ("all", assignment[rid]):
            records.append(
                ReplayRecord(
                    id=rid,
                    task="chat",
                    messages=(ReplayMessage(role="user", content=instruction),),
                    responses=responses,
                    meta={"split": assignment[rid], "dataset": subset},
                )
            )

    def counts(c: Counter[str]) -> str:
        return ", ".join(f"{m} {n}" for m, n in c.items() if n) or "none"

    assumptions = (
        f"{NAME}: score = preference - 1 from each model's {ANNOTATOR} annotations, matched by "
        f"instruction; {REFERENCE} (the reference) = 0.5",
        f"{NAME}: models without an answer or a preference are left out of that record "
        f"(over all {len(ids)} instructions: {counts(missing)})",
        f"{NAME}: empty answers kept as empty text, scored by the judge as recorded "
        f"({counts(empty)})",
        f"{NAME}: tokens estimated as ceil(chars/4) of instruction (input) and output; the "
        "source has no token counts",
        f"{NAME}: prices per 1M tokens in/out: list {fmt_prices(LIST_PRICES)}; assumed hosted "
        f"{fmt_prices(ASSUMED_PRICES)}",
        f"{NAME}: split by seeded shuffle (seed={seed}) within each dataset subset: "
        f"{TRAIN_FRACTION:.0%} train / {1 - TRAIN_FRACTION:.0%} test; see meta.split",
    )
    return Converted(records, 0, MODELS, assumptions)


def _items(path: Path, fields: tuple[str, ...]) -> list[dict[str, Any]]:
    data = read_json(path)
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON list of records")
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise DatasetError(f"{path}: item {i}: expected an object")
        for field in fields:
            if not isinstance(item.get(field), str):
                raise DatasetError(f"{path}: item {i}: {field}: expected a string")
    return data


def _by_instruction(root: Path, rel: str, field: str) -> dict[str, Any]:
    path = need(root, rel)
    out: dict[str, Any] = {}
    for i, item in enumerate(_items(path, ("instruction",))):
        key = item["instruction"]
        if key in out:
            raise DatasetError(f"{path}: item {i}: instruction repeated")
        out[key] = item.get(field)
    return out


def _is_number(value: Any) -> bool:
    # The judge sometimes fails upstream and leaves None or NaN; such answers have no score.
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _score(preference: float, path: Path) -> float:
    score = preference - 1.0
    if not -1e-9 <= score <= 1.0 + 1e-9:
        raise DatasetError(f"{path}: preference {preference} outside [1, 2]")
    # Clamped because preference - 1 can carry float noise just outside [0, 1] at the ends.
    return min(1.0, max(0.0, score))


IMPORTER = Importer(name=NAME, files=FILES, default_url=DEFAULT_URL, prices=PRICES, convert=convert)
