"""What a calibration found (``CalibrationResult``), and the summary and interval shown with it."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from cascade.calibration.threshold_search import SEED

__all__ = [
    "BOOTSTRAP",
    "CalibrationResult",
    "expected_guarantee",
    "held_to_simulation",
    "pct",
    "plain_guarantee",
    "ratio_ci",
    "summary",
    "top_alone_reason",
]


def pct(x: float, of: float) -> str:
    return f"{x / of:.1%}" if of else "-"


BOOTSTRAP = 1000


@dataclass(frozen=True, slots=True)
class CalibrationResult:
    """What ``calibrate`` found; ``as_json()`` is what the CLI prints or saves.

    Attributes:
        task: The calibrated task.
        status: ``ok``, or ``failed`` (target unreachable, or no cheaper than always-top).
        message: One paragraph saying what was chosen, or why nothing was.
        target_quality: R: quality must reach R x the always-top quality.
        guard: How the choice is protected against overfitting the train set.
        ladder: The kept rungs (model keys), top last.
        thresholds: Model key -> ``{"type.setting": value}``; ``-inf`` means the evaluator
            was removed (accept whenever the rung's other evaluators pass).
        train / test: ``run_bench``'s report of the task on the calibrated config, plus
            ``quality_ratio_ci95`` (bootstrap) and ``target_met``.
        simulated_train: The simulator's own numbers for the chosen point.
        frontier: (cost per query, quality) Pareto points over every configuration evaluated.
        config: The calibrated YAML mapping (empty when nothing was chosen).
    """

    task: str
    status: Literal["ok", "failed"]
    message: str
    target_quality: float
    guard: str
    ladder: tuple[str, ...]
    thresholds: dict[str, dict[str, float]]
    train: dict[str, Any]
    test: dict[str, Any] | None
    simulated_train: dict[str, float]
    frontier: list[tuple[float, float]]
    config: dict[str, Any]
    guarantee: dict[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        """A JSON-safe dict (a removed evaluator's ``-inf`` becomes null)."""
        return {
            "task": self.task,
            "status": self.status,
            "message": self.message,
            "target_quality": self.target_quality,
            "guard": self.guard,
            "ladder": list(self.ladder),
            "thresholds": {
                k: {s: (v if math.isfinite(v) else None) for s, v in t.items()}
                for k, t in self.thresholds.items()
            },
            "train": self.train,
            "test": self.test,
            "simulated_train": self.simulated_train,
            "frontier": [list(p) for p in self.frontier],
            "config": self.config,
            "guarantee": self.guarantee,
        }


def held_to_simulation(
    report: dict[str, Any],
    cost: np.ndarray,
    quality: np.ndarray,
    q_top: np.ndarray,
    target: float,
    label: str,
) -> dict[str, Any]:
    """``run_bench``'s report of a calibrated config, checked against the simulator's per-query
    cost and quality for it (a mismatch is a bug, and raises), with the bootstrap interval of
    the quality ratio and whether the target was met."""
    from cascade.errors import CascadeError

    if (
        abs(cost.mean() - report["cost_per_query"]) > 1e-9
        or abs(quality.mean() - report["quality"]) > 1e-9
    ):
        raise CascadeError(
            f"calibration: the simulation disagrees with run_bench on {label} "
            f"(cost {cost.mean()} vs {report['cost_per_query']}, quality "
            f"{quality.mean()} vs {report['quality']}); please report this bug"
        )
    report["quality_ratio_ci95"] = ratio_ci(quality, q_top)
    report["target_met"] = bool(
        report["quality"] >= target * report["baselines"]["always_top"]["quality"] - 1e-12
    )
    return report


def ratio_ci(quality: np.ndarray, q_top: np.ndarray) -> list[float | None]:
    """Bootstrap 95% interval of mean(quality) / mean(q_top), paired, fixed seed."""
    rng = np.random.default_rng(SEED)
    idx = rng.integers(0, len(quality), size=(BOOTSTRAP, len(quality)))
    top = q_top[idx].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratios = np.where(top > 0, quality[idx].sum(axis=1) / top, np.nan)
    if np.isnan(ratios).all():
        return [None, None]  # always-top never scores: the ratio is undefined
    lo, hi = np.nanpercentile(ratios, [2.5, 97.5])
    return [float(lo), float(hi)]


def summary(
    ladder: tuple[str, ...],
    thresholds: Mapping[str, Mapping[str, float]],
    train: Mapping[str, Any],
    test: Mapping[str, Any] | None,
    top_cost: float,
    *,
    top_alone: str | None = None,
) -> tuple[Literal["ok", "failed"], str]:
    """The status and the one-paragraph message of a chosen configuration.

    ``top_alone`` says why the top rung is kept alone, when it is (the method knows why).
    """
    cost, quality = train["cost_per_query"], train["quality"]
    top = train["baselines"]["always_top"]
    settings = (
        "; ".join(
            f"{k} {s}={v:g}" if math.isfinite(v) else f"{k} {s.split('.')[0]} removed"
            for k, t in thresholds.items()
            for s, v in t.items()
        )
        or "none"
    )
    message = (
        f"ladder {' -> '.join(ladder)} ({settings}): cost {cost:.6g} USD/query, "
        f"{pct(cost, top['cost_per_query'])} of always-top; quality {quality:.4f}, "
        f"{pct(quality, top['quality'])} of always-top on train"
    )
    if test is not None:
        t_top = test["baselines"]["always_top"]
        message += (
            f"; on test {pct(test['cost_per_query'], t_top['cost_per_query'])} "
            f"of the cost at {pct(test['quality'], t_top['quality'])} of the "
            f"quality (target {'met' if test['target_met'] else 'missed'})"
        )
    if cost > top_cost * (1 + 1e-9):
        return "failed", (
            f"no cascade pays for itself: the cheapest configuration that meets "
            f"the target costs {cost:.6g} USD/query, more than always-top "
            f"({top_cost:.6g}). {message}"
        )
    if len(ladder) == 1:
        why = top_alone or "no cheaper cascade meets the target"
        return "ok", f"keep the top rung alone: {why}. {message}"
    return "ok", message


def plain_guarantee(delta: float, target: float, data: str, top: str) -> str:
    """The certificate in one sentence a reader without statistics can check against a goal."""
    return (
        f"With {_percent(1 - delta)} confidence, quality on traffic like {data} stays at least "
        f"{_percent(target)} of always-{top}'s."
    )


def expected_guarantee(target: float, data: str, top: str) -> str:
    """What ``--guarantee expected`` promises, in one sentence."""
    return (
        f"On average over calibration sets like {data}, quality on new traffic is at least "
        f"{_percent(target)} of always-{top}'s (an average: one calibration may fall short)."
    )


def _percent(x: float) -> str:
    return f"{round(100 * x, 4):g}%"  # rounded first: 0.07 * 100 is 7.000000000000001


def top_alone_reason(
    gates: Sequence[Sequence[np.ndarray]], needed: int | None, certify: int, n: int
) -> str:
    """Why no policy cheaper than always-top was certified, and what to try: said once.

    Args:
        gates: Per candidate sequence, d = q - R x q_top of each candidate still to pass before
            a cheaper one is reached (fixed-sequence testing); empty when nothing is cheaper.
        needed: The estimated certify queries (``guarantee.queries_needed``), if any.
        certify: The queries the candidates were tested on.
        n: The train queries in all.
    """
    if not gates:
        return (
            "no policy cheaper than always-top was found to try (with --scheme fixed, an "
            "evaluator that never passes below the top, such as agreement on a first rung, "
            "blocks every level: try --scheme holdout)"
        )
    advice = ". Try a lower --target-quality or more labelled queries"
    if not any(all(float(d.mean()) > 0 for d in gate) for gate in gates):
        return (
            f"no cheaper policy reached the target on the {certify} queries it was certified "
            f"on{advice}"
        )
    why = f"{certify} queries are too few to certify a cheaper policy at this target"
    if needed is None:
        return why + ", and too few to estimate how many would be" + advice
    total = (
        f", so about {_about(needed * n / certify)} labelled queries in all" if certify < n else ""
    )
    return (
        f"{why}; about {_about(needed)} would be needed{total} (a rough estimate, from how far "
        f"the candidates cleared the target on these queries){advice}"
    )


def _about(n: float) -> str:
    return f"{float(f'{n:.2g}'):,.0f}"  # two significant figures: an estimate, not a count
