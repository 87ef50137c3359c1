"""Writing a calibrated config: the YAML with its provenance header, fitted models beside it."""

from __future__ import annotations

import copy
import datetime as dt
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from cascade.calibration.result import CalibrationResult, pct
from cascade.errors import CascadeError

__all__ = ["anchor_paths", "write_calibrated"]


def anchor_paths(raw: Any, base: Path) -> Any:
    """Make relative file paths absolute, so the config works from any folder.

    They resolve against the config's folder, but the calibrated file may be written elsewhere,
    and calibration replays the chosen config from a mapping that has no folder at all. The
    paths: ``schema_file``, a ``quality_model``'s ``model``, and a ``router``'s or
    ``task_router``'s ``model`` (elsewhere ``model`` names a ``models:`` key).
    """
    if isinstance(raw, list):
        return [anchor_paths(item, base) for item in raw]
    if not isinstance(raw, dict):
        return raw
    out = _anchored({key: anchor_paths(value, base) for key, value in raw.items()},
                    "schema_file", base)
    if raw.get("type") == "quality_model":
        out = _anchored(out, "model", base)
    for section in ("router", "task_router"):
        if isinstance(out.get(section), dict):
            out[section] = _anchored(out[section], "model", base)
    return out


def _anchored(mapping: dict[str, Any], key: str, base: Path) -> dict[str, Any]:
    value = mapping.get(key)
    if isinstance(value, str) and not Path(value).is_absolute():
        return {**mapping, key: str(base / value)}
    return mapping


def write_calibrated(
    result: CalibrationResult, out: str | Path, *, command: str | None = None
) -> None:
    """Write the calibrated config as YAML, with its provenance as a comment header.

    Args:
        result: An ``ok`` result of ``calibrate``.
        out: The file to write.
        command: The command line that produced it, recorded in the header.

    Raises:
        CascadeError: the calibration failed (there is no config to write).
    """
    if result.status != "ok" or not result.config:
        raise CascadeError(f"nothing to write: calibration failed: {result.message}")
    lines = [f"# Calibrated by cascade calibrate on {dt.date.today().isoformat()}."]
    if command:
        lines.append(f"# command: {command}")
    lines += [
        f"# task {result.task}: target quality >= {result.target_quality:g} x always-top (train)",
        f"# guard: {result.guard}",
        f"# ladder: {' -> '.join(result.ladder)}",
    ]
    for key, settings in result.thresholds.items():
        for name, value in settings.items():
            shown = f"{value:g}" if math.isfinite(value) else "removed (accept all)"
            lines.append(f"# threshold {key}: {name} = {shown}")
    for label, report in (("train", result.train), ("test", result.test)):
        if not report:
            continue
        top = report["baselines"]["always_top"]
        lo, hi = report["quality_ratio_ci95"]
        ci = f"{lo:.1%} to {hi:.1%}" if lo is not None and hi is not None else "undefined"
        lines.append(
            f"# {label} (n={report['n']}): cost {report['cost_per_query']:.6g} USD/query "
            f"({pct(report['cost_per_query'], top['cost_per_query'])} of always-top "
            f"{top['cost_per_query']:.6g}); quality {report['quality']:.4f} "
            f"({pct(report['quality'], top['quality'])} of always-top {top['quality']:.4f}; "
            f"bootstrap 95% CI {ci})"
        )
    if result.guarantee is not None:
        g = result.guarantee
        tested = (
            f"{g['bound']} bound, {g['certify_queries']} certify queries, p = {g['p_value']:.4g}"
            if g.get("p_value") is not None
            else f"{g['certify_queries']} certify queries"
        )
        lines.append(f"# guarantee: {g['statement']} ({g['method']}, {tested})")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    config = _externalize(result.config, result.task, Path(out))
    body = yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    Path(out).write_text("\n".join(lines) + "\n" + body, encoding="utf-8")


def _externalize(config: Mapping[str, Any], task: str, out: Path) -> dict[str, Any]:
    """Move fitted models (quality_model, router) into JSON files beside ``out``.

    The YAML then names each file relative to itself, so the pair can be moved together.
    """
    mapping = copy.deepcopy(dict(config))
    settings = mapping["tasks"][task]
    stem = out.name.removesuffix(out.suffix)
    for entry in settings.get("ladder", []):
        if not isinstance(entry, dict):
            continue
        for spec in entry.get("evaluators") or []:
            if spec.get("type") == "quality_model" and isinstance(spec.get("model"), dict):
                name = f"{stem}.{task}.{entry['model']}.quality.json"
                (out.parent / name).write_text(json.dumps(spec["model"], indent=1))
                spec["model"] = name
    router = settings.get("router")
    if isinstance(router, dict) and isinstance(router.get("model"), dict):
        name = f"{stem}.{task}.router.json"
        (out.parent / name).write_text(json.dumps(router["model"], indent=1))
        router["model"] = name
    return mapping
