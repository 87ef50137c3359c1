"""The certification's statistics: bets that never read the point they are placed on,
Bonferroni across sequences, conformal risk control's monotone losses and n + 1 correction, and
certificates computed on rows the policy was never fitted on."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from cascade.calibration.calibrate import calibrate
from cascade.calibration.guarantee import (
    betting_pvalue,
    bets,
    certify,
    crc_admissible,
    fixed_sequence,
)
from cascade.providers.dataset import load_dataset, write_dataset
from tests.calibration.test_policy import _config, _records


def test_bets_are_predictable() -> None:
    """Bet t depends on x_1..x_{t-1} only: changing x_t leaves it, and every bet before it,
    unchanged (a bet sized with its own point voids Ville's inequality)."""
    rng = np.random.default_rng(0)
    x = rng.random(200)
    base = bets(x, 0.48, 0.1)
    for t in (0, 1, 57, 199):
        moved = x.copy()
        moved[t] = moved[t] / 3 + 0.01
        again = bets(moved, 0.48, 0.1)
        np.testing.assert_array_equal(again[: t + 1], base[: t + 1])
        if t + 1 < len(x):
            assert again[t + 1] != base[t + 1]  # the next bet does read it


def test_betting_pvalue_holds_at_the_null_boundary_with_rare_large_losses() -> None:
    """E[d] = 0 exactly, d = -R with probability 1/n: the betting p-value rejects at most
    delta of the time, where a normal approximation would reject about 1 - 1/e of it."""
    rng = np.random.default_rng(3)
    r, n = 0.95, 150
    p = 1 / n
    win = r * p / (1 - p)  # mean zero
    rejected = 0
    for trial in range(400):
        d = np.where(rng.random(n) < p, -r, win)
        rejected += betting_pvalue(d, -r, 1.0, 0.1, seed=trial) <= 0.1
    assert rejected / 400 <= 0.1


def test_certify_splits_delta_across_sequences() -> None:
    """Three sequences whose first candidate has p in (delta/3, delta] certify nothing; the
    same candidate alone, tested at delta, is certified."""
    rng = np.random.default_rng(1)
    n = 120
    # search a d whose betting p-value falls between delta / 3 and delta
    while True:
        d = rng.choice([-0.9, 0.1, 1.0], size=n, p=[0.06, 0.86, 0.08])
        pv = betting_pvalue(d, -0.9, 1.0, 0.1 / 3)
        if 0.1 / 3 < pv <= 0.1 and betting_pvalue(d, -0.9, 1.0, 0.1) <= 0.1:
            break
    q_top = np.ones(n)
    outcome = {"top": (np.full(n, 10.0), q_top)}
    for name in ("a", "b", "c"):
        outcome[name] = (np.ones(n), d + 0.9 * q_top)
    three, _, level = certify([["a"], ["b"], ["c"]], "top", outcome, q_top, 0.9, 0.1,
                              "pac", "betting", 0)
    assert level == pytest.approx(0.1 / 3)
    assert set(three) == {"top"}
    one, _, level = certify([["a"]], "top", outcome, q_top, 0.9, 0.1, "pac", "betting", 0)
    assert level == 0.1
    assert set(one) == {"top", "a"}


def test_fixed_sequence_tests_in_order_and_stops() -> None:
    good = np.full(300, 0.2)
    bad = np.full(300, -0.2)
    cert = fixed_sequence([good, bad, good], -0.9, 1.0, 0.1)
    assert cert.certified == (0,)
    assert len(cert.pvalues) == 2


def test_crc_running_maximum_and_n_plus_one() -> None:
    """A query hurt by an earlier candidate stays hurt for the later ones (monotone losses),
    and the bound counts one worst-case query more (n + 1)."""
    n, r = 100, 0.95
    # candidate 0: every loss -0.05 (sum -5); candidate 1 hurts query 0 (loss r); candidate 2
    # alone would be fine, but query 0 keeps its loss r from candidate 1
    c0 = np.full(n, -0.05)
    c1 = c0.copy()
    c1[0] = r
    c2 = c0.copy()
    # sums: c0 -5 + r < 0; c1 -4.95 + 0.95 + r = -4 + r < 0; c2 (monotone) same as c1
    assert crc_admissible([c0, c1, c2], r) == 3
    # 95 hurt queries in candidate 1 push it over: its monotone sum is positive
    c1[:95] = r
    assert crc_admissible([c0, c1, c2], r) == 1
    # c1 and c2 each hurt three queries, different ones: each alone passes, but along the
    # order c2's monotone loss keeps c1's three hurt queries too, and fails
    c1, c2 = c0.copy(), c0.copy()
    c1[:3], c2[3:6] = r, r
    assert crc_admissible([c0, c2], r) == 2
    assert crc_admissible([c0, c1], r) == 2
    assert crc_admissible([c0, c1, c2], r) == 2
    # the n + 1 correction: a sum of exactly -r passes, -r + 0.01 does not
    edge = np.zeros(n)
    edge[0] = -r
    assert crc_admissible([edge], r) == 1
    edge[1] = 0.01
    assert crc_admissible([edge], r) == 0


def _cert_rows(n: int, seed: int = 0, fit_fraction: float = 0.5) -> np.ndarray:
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[round(fit_fraction * n):])


def test_holdout_certifies_only_on_rows_it_never_fitted(tmp_path: Path) -> None:
    """Poisoning the certify rows' labels leaves everything fitted (the searched frontier) as
    it was and changes the certificate; so the fit never reads a certify label and the
    certificate reads them."""
    cfg = _config(tmp_path, ["small", "mid", "large"])
    write_dataset(tmp_path / "train.jsonl", _records(400, 5))
    clean = calibrate(cfg, tmp_path / "train.jsonl", target_quality=0.9, scheme="holdout")
    records = load_dataset(tmp_path / "train.jsonl")
    poisoned = []
    cert = set(_cert_rows(len(records)).tolist())
    for i, r in enumerate(records):
        if i in cert:  # the cheaper rungs always wrong, the top always right
            responses = {k: v.model_copy(update={"score": 1.0 if k == "large" else 0.0})
                         for k, v in r.responses.items()}
            r = r.model_copy(update={"responses": responses})
        poisoned.append(r)
    write_dataset(tmp_path / "poisoned.jsonl", poisoned)
    bad = calibrate(cfg, tmp_path / "poisoned.jsonl", target_quality=0.9, scheme="holdout")
    assert clean.frontier == bad.frontier  # the fit part's search is untouched
    assert clean.guarantee["certified_cheaper_than_top"] is True
    assert bad.guarantee["certified_cheaper_than_top"] is False
    assert bad.ladder == ("large",)


def test_clt_is_refused() -> None:
    with pytest.raises(ValueError, match="not valid at any sample size"):
        calibrate("unused.yaml", "unused.jsonl", target_quality=0.9, bound="clt")  # type: ignore[arg-type]


def test_betting_pvalue_is_in_unit_interval() -> None:
    p = betting_pvalue(np.full(50, 0.3), -0.9, 1.0, 0.1)
    assert 0 < p <= 1
    assert math.isclose(betting_pvalue(np.array([]), -0.9, 1.0, 0.1), 1.0)
