"""Small, dependency-free learners for quality estimates: feature hashing, logistic regression,
isotonic calibration, and the plain-data form a fitted model is saved in.

A fitted model is JSON: weights, hashing settings and the isotonic map. Loading one parses JSON
and validates every field with pydantic (finite numbers, bounded sizes), so a model file from an
untrusted source can at worst be rejected; it never runs code (no pickle).

Everything here is deterministic: the hash is ``zlib.crc32`` (stable across processes, unlike
``hash()``), and fitting uses Newton's method with an L2 penalty, no random start.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# numpy is imported inside the functions that compute: it takes about 0.1 s, and loading a
# config or running a cascade without a learned model needs none of it.
if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "Calibrator",
    "Hashing",
    "LinearModel",
    "fit_isotonic",
    "fit_logistic",
    "hashed",
    "sigmoid",
]

MAX_BUCKETS = 1 << 16
MAX_DENSE = 512
MAX_KNOTS = 10_000
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def sigmoid(z: Any) -> Any:
    """The logistic function, elementwise, without overflow warnings."""
    import numpy as np

    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=float)))


class Hashing(BaseModel):
    """How text becomes hashed word n-gram counts: the settings a fitted model keeps."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    buckets: int = Field(256, ge=1, le=MAX_BUCKETS)
    ngrams: int = Field(2, ge=1, le=3)
    max_chars: int = Field(4000, ge=1, le=1_000_000)


def hashed(text: str, hashing: Hashing, salt: str) -> dict[int, float]:
    """Word n-gram counts of ``text`` folded into ``hashing.buckets`` (log-scaled, sign-hashed).

    ``salt`` separates feature spaces (prompt and answer words land in different places of the
    same bucket range only by chance, never systematically).
    """
    words = _WORD.findall(text[: hashing.max_chars].lower())
    out: dict[int, float] = {}
    for n in range(1, hashing.ngrams + 1):
        for i in range(len(words) - n + 1):
            h = zlib.crc32(f"{salt}|{' '.join(words[i : i + n])}".encode())
            bucket, sign = h % hashing.buckets, 1.0 if (h >> 31) & 1 else -1.0
            out[bucket] = out.get(bucket, 0.0) + sign
    # log scaling keeps one repeated word from dominating a long text
    return {k: math.copysign(math.log1p(abs(v)), v) for k, v in out.items() if v}


def _finite(values: Iterable[float], what: str) -> None:
    for v in values:
        if not math.isfinite(v):
            raise ValueError(f"{what}: every number must be finite")


class Calibrator(BaseModel):
    """A monotone map from a raw score to a probability: linear interpolation between knots."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    x: list[float] = Field(max_length=MAX_KNOTS)
    y: list[float] = Field(max_length=MAX_KNOTS)

    @model_validator(mode="after")
    def _check(self) -> Calibrator:
        if len(self.x) != len(self.y) or not self.x:
            raise ValueError("isotonic map: x and y must be non-empty and of equal length")
        _finite(self.x, "isotonic map x")
        _finite(self.y, "isotonic map y")
        if any(b < a for a, b in zip(self.x, self.x[1:], strict=False)):
            raise ValueError("isotonic map: x must be sorted")
        if any(b < a for a, b in zip(self.y, self.y[1:], strict=False)):
            raise ValueError("isotonic map: y must be non-decreasing")
        if not all(0.0 <= v <= 1.0 for v in self.y):
            raise ValueError("isotonic map: y must lie in [0, 1]")
        return self

    def __call__(self, raw: Any) -> Any:
        """Probabilities for raw scores (array in, array out; clamped at the ends)."""
        import numpy as np

        return np.interp(raw, self.x, self.y)


class LinearModel(BaseModel):
    """Logistic regression over named dense features and hashed text features, then isotonic.

    Attributes:
        dense: Names of the dense features, in the order of ``weights``.
        weights: One weight per dense feature.
        hashing: The text hashing settings (None: no text features).
        text: Which texts are hashed (``prompt``, ``answer``), each with its own weights.
        text_weights: For each entry of ``text``, ``hashing.buckets`` weights.
        bias: The intercept.
        mean / scale: Standardisation of the dense features (applied before the weights).
        calibrator: The isotonic map from the linear score to a probability.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    dense: list[str] = Field(max_length=MAX_DENSE)
    weights: list[float] = Field(max_length=MAX_DENSE)
    mean: list[float] = Field(max_length=MAX_DENSE)
    scale: list[float] = Field(max_length=MAX_DENSE)
    hashing: Hashing | None = None
    text: list[str] = Field(default_factory=list, max_length=2)
    text_weights: list[list[float]] = Field(default_factory=list, max_length=2)
    bias: float = 0.0
    calibrator: Calibrator | None = None

    @field_validator("text")
    @classmethod
    def _texts(cls, v: list[str]) -> list[str]:
        if any(t not in ("prompt", "answer") for t in v) or len(set(v)) != len(v):
            raise ValueError("text: a list of distinct 'prompt' / 'answer'")
        return v

    @model_validator(mode="after")
    def _shapes(self) -> LinearModel:
        n = len(self.dense)
        if not (len(self.weights) == len(self.mean) == len(self.scale) == n):
            raise ValueError("dense, weights, mean and scale must have the same length")
        _finite([*self.weights, *self.mean, *self.scale, self.bias], "weights")
        if any(s <= 0 for s in self.scale):
            raise ValueError("scale: every entry must be positive")
        if len(self.text_weights) != len(self.text):
            raise ValueError("text_weights: one list per entry of text")
        if self.text and self.hashing is None:
            raise ValueError("text features need hashing settings")
        for row in self.text_weights:
            if self.hashing is None or len(row) != self.hashing.buckets:
                raise ValueError("text_weights: each list must have hashing.buckets entries")
            _finite(row, "text_weights")
        return self

    def raw(self, dense: Mapping[str, float], texts: Mapping[str, str]) -> float:
        """The linear score of one example (missing dense features count as 0)."""
        z = self.bias
        for name, w, mu, sd in zip(self.dense, self.weights, self.mean, self.scale, strict=True):
            z += w * (float(dense.get(name, 0.0)) - mu) / sd
        if self.hashing is not None:
            for kind, row in zip(self.text, self.text_weights, strict=True):
                for bucket, value in hashed(texts.get(kind, ""), self.hashing, kind).items():
                    z += row[bucket] * value
        return z

    def probability(self, dense: Mapping[str, float], texts: Mapping[str, str]) -> float:
        """The calibrated probability of one example."""
        z = self.raw(dense, texts)
        if self.calibrator is None:
            return float(sigmoid(z))
        return float(self.calibrator(z))


def fit_logistic(
    x: np.ndarray, y: np.ndarray, *, l2: float = 1.0, iterations: int = 25
) -> tuple[np.ndarray, float]:
    """L2-penalised logistic regression by Newton's method; soft labels in [0, 1] allowed.

    Returns:
        (weights, bias). The bias is not penalised.
    """
    import numpy as np

    n, d = x.shape
    a = np.hstack([x, np.ones((n, 1))])
    w = np.zeros(d + 1)
    ybar = float(np.clip(y.mean(), 1e-3, 1 - 1e-3))
    w[-1] = math.log(ybar / (1 - ybar))
    penalty = np.full(d + 1, l2)
    penalty[-1] = 0.0
    for _ in range(iterations):
        p = sigmoid(a @ w)
        grad = a.T @ (p - y) + penalty * w
        hess = (a * (p * (1 - p))[:, None]).T @ a + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if float(np.max(np.abs(step))) < 1e-7:
            break
    return w[:-1], float(w[-1])


def fit_isotonic(raw: Sequence[float], y: Sequence[float], *, knots: int = 200) -> Calibrator:
    """Pool-adjacent-violators on (raw score, label), reduced to at most ``knots`` knots."""
    import numpy as np

    ux, inverse = np.unique(np.asarray(raw, dtype=float), return_inverse=True)
    # tied scores are one point with their mean label, so the map is a function of the score
    sums = np.bincount(inverse, weights=np.asarray(y, dtype=float), minlength=len(ux))
    counts = np.bincount(inverse, minlength=len(ux)).astype(float)
    # blocks: [sum of y, count, sum of count x score]
    blocks: list[list[float]] = []
    for xv, s, c in zip(ux, sums, counts, strict=True):
        blocks.append([float(s), float(c), float(c * xv)])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] >= blocks[-1][0] / blocks[-1][1]:
            s2, c2, x2 = blocks.pop()
            blocks[-1][0] += s2
            blocks[-1][1] += c2
            blocks[-1][2] += x2
    # Knots at each block's mean score: the map rises linearly between blocks instead of
    # staying flat inside them, so it keeps the model's ranking (thresholds stay fine-grained).
    kx = [x / c for _, c, x in blocks]
    ky = [min(1.0, max(0.0, s / c)) for s, c, _ in blocks]
    if len(kx) > knots:
        pick = np.unique(np.linspace(0, len(kx) - 1, knots).round().astype(int))
        kx, ky = [kx[i] for i in pick], [ky[i] for i in pick]
    out_x: list[float] = []
    out_y: list[float] = []
    for xv, yv in zip(kx, ky, strict=True):
        if out_x and xv <= out_x[-1]:
            out_y[-1] = max(out_y[-1], yv)
            continue
        out_x.append(xv)
        out_y.append(yv)
    return Calibrator(x=out_x, y=out_y)
