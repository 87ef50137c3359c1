"""The validity simulation in CI: synthetic ladders whose truth is known, a few hundred
calibrations each (``benchmarks/validity.py`` runs thousands). ``pac``: the share of
calibrations whose choice truly falls below R x always-top stays <= delta (plus the binomial
slack of a few hundred trials); ``expected``: the chosen cascades' true quality is >= R x
always-top's on average."""

from __future__ import annotations

import math

import pytest

from cascade.calibration.validity import WORLDS, run_trials

TRIALS = {100: 200, 300: 200, 1000: 80}
DELTA = 0.1


def _slack(trials: int) -> float:
    return 2 * math.sqrt(DELTA * (1 - DELTA) / trials)  # two binomial standard errors


@pytest.mark.parametrize("n", sorted(TRIALS))
@pytest.mark.parametrize("world", WORLDS[:2], ids=lambda w: w.name)
@pytest.mark.parametrize("scheme", ["fixed", "holdout"])
def test_pac_violation_rate_is_at_most_delta(world, n: int, scheme: str) -> None:
    trials = TRIALS[n]
    result = run_trials(world, n, trials, delta=DELTA, guarantee="pac", scheme=scheme, seed=n,
                        truth_size=100_000)
    assert result.violation_rate <= DELTA + _slack(trials)


@pytest.mark.parametrize("n", sorted(TRIALS))
@pytest.mark.parametrize("world", WORLDS[:2], ids=lambda w: w.name)
def test_expected_quality_is_at_least_the_target_on_average(world, n: int) -> None:
    trials = TRIALS[n]
    result = run_trials(world, n, trials, guarantee="expected", scheme="fixed", seed=n,
                        truth_size=100_000)
    spread = float(__import__("numpy").std(result.shortfall)) / math.sqrt(trials)
    assert result.mean_shortfall >= -2 * spread


def test_the_simulation_can_see_a_broken_guarantee() -> None:
    """The same simulation fails a method that certifies at delta = 0.5 instead of 0.1:
    the check has teeth."""
    result = run_trials(WORLDS[1], 300, 200, delta=0.5, guarantee="pac", scheme="fixed", seed=7,
                        truth_size=100_000)
    assert result.violation_rate > DELTA + _slack(200)
