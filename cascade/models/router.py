"""Per-query rung skipping: a prompt-only estimate of whether each lower rung will succeed.

A router is fitted by ``cascade calibrate`` from the prompt alone (its length, its numbers and,
if fitted with them, hashed word n-grams), one calibrated model per rung. Before a rung is
called, the engine asks the router for P(this rung's answer is right | prompt); below the
rung's ``skip_below`` the rung is skipped, so neither its call nor its checks are paid for, and
the step is recorded with decision ``skip`` and the predicted probability. The top rung is never
skipped.

YAML::

    tasks:
      math:
        ladder: [small, medium, large]
        router:
          model: calibrated.math.router.json      # or inline: {rungs: {small: {...}, ...}}
          skip_below: {small: 0.35, medium: 0.2}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cascade.config.messages import pydantic_message
from cascade.config.paths import read_capped
from cascade.errors import ConfigError
from cascade.models.features import prompt_features
from cascade.models.linear import LinearModel

__all__ = ["MAX_ROUTER_BYTES", "Router", "RouterModel", "load_router"]

MAX_ROUTER_BYTES = 8 * 1024 * 1024


class RouterModel(BaseModel):
    """The plain-data router: one prompt-only ``LinearModel`` per rung (model key)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rungs: dict[str, LinearModel] = Field(max_length=64)


@dataclass(frozen=True, slots=True)
class Router:
    """A fitted router with its skip thresholds."""

    model: RouterModel
    skip_below: Mapping[str, float]

    def probability(self, key: str, prompt: str) -> float:
        """P(the rung ``key`` answers this prompt right), from the prompt alone."""
        return self.model.rungs[key].probability(prompt_features(prompt), {"prompt": prompt})

    def skip(self, key: str, prompt: str) -> tuple[float, float] | None:
        """``(probability, threshold)`` when the rung should be skipped for this prompt."""
        threshold = self.skip_below.get(key)
        if threshold is None or threshold <= 0:
            return None
        p = self.probability(key, prompt)
        return (p, threshold) if p < threshold else None


def load_router(
    source: str | Mapping[str, Any],
    skip_below: Mapping[str, float],
    ladder: list[str],
    *,
    config_dir: Path | None,
    path: str | None,
    location: str,
) -> Router:
    """Build a ``Router`` from a JSON file (relative to the config's folder) or a mapping.

    Raises:
        ConfigError: the model is missing, too large or invalid, or ``skip_below`` names a rung
            that is not in the ladder, is the top rung, or has no fitted model.
    """

    def fail(message: str, key: str) -> ConfigError:
        return ConfigError(message, path=path, location=f"{location}.{key}")

    try:
        if isinstance(source, str):
            file = Path(source)
            if not file.is_absolute() and config_dir is not None:
                file = config_dir / file
            try:
                raw = read_capped(file, MAX_ROUTER_BYTES)
            except ConfigError as exc:
                raise fail(f"cannot read router file {str(file)!r}: {exc}", "model") from exc
            model = RouterModel.model_validate_json(raw)
        else:
            model = RouterModel.model_validate(dict(source))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise fail(f"not a valid router model: {where}: {pydantic_message(err)}", "model") from exc
    for key in skip_below:
        if key not in ladder:
            raise fail(
                f"{key!r} is not a rung of this ladder ({', '.join(ladder)})", f"skip_below.{key}"
            )
        if key == ladder[-1]:
            raise fail(f"the top rung {key!r} is never skipped", f"skip_below.{key}")
        if key not in model.rungs:
            raise fail(f"the router model has no estimate for rung {key!r}", f"skip_below.{key}")
    return Router(model=model, skip_below=dict(skip_below))
