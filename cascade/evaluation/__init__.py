"""The evaluation plumbing: how evaluators plug in, are built from YAML and combine into a decision.

The built-in evaluators live in the top-level ``evaluators`` package and load through the same
entry points as third-party ones. ``from cascade.evaluation import Evaluator, Tunable`` is the
public face for plug-in authors.
"""

from cascade.evaluation.base import (
    Evaluator,
    EvaluatorContext,
    EvaluatorLike,
    ModelServices,
    Slot,
    Thresholded,
    Tunable,
    build_evaluators,
    build_one,
    combine,
    decided,
    finalized,
    judging,
    shown,
    threshold_values,
    to_verdict,
    tunable_of,
)

__all__ = [
    "Evaluator",
    "EvaluatorContext",
    "EvaluatorLike",
    "ModelServices",
    "Slot",
    "Thresholded",
    "Tunable",
    "build_evaluators",
    "build_one",
    "combine",
    "decided",
    "finalized",
    "judging",
    "shown",
    "threshold_values",
    "to_verdict",
    "tunable_of",
]
