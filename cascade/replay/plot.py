"""Cost against quality, one picture per benchmark: single models, the oracle, the cascade."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cascade.errors import ConfigError
from cascade.formatting import install_hint

__all__ = ["plot_tradeoff"]


def plot_tradeoff(
    tasks: Mapping[str, Mapping[str, Any]],
    out: str | Path,
    *,
    frontier: Mapping[str, Sequence[tuple[float, float]]] | None = None,
    data: str | None = None,
) -> None:
    """Write a PNG with one panel per task.

    Args:
        tasks: The bench report's ``tasks``.
        out: The PNG to write.
        frontier: Calibration curves to draw, per task (measured on train data).
        data: Which data the points were measured on (``train``, ``test``...), said in the
            title so a train-set picture is never mistaken for a held-out one.

    Raises:
        ConfigError: matplotlib is not installed (the ``[plot]`` extra).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on servers and CI
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ConfigError(f"--plot needs matplotlib: {install_hint('plot')}") from exc
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 5), squeeze=False)
    for ax, (name, report) in zip(axes[0], tasks.items(), strict=True):
        for i, (key, model) in enumerate(report["models"].items()):
            ax.scatter(
                model["cost_per_query"],
                model["quality"],
                color="grey",
                zorder=3,
                label="single model (always that one)" if i == 0 else None,
            )
            ax.annotate(
                key,
                (model["cost_per_query"], model["quality"]),
                fontsize=8,
                xytext=(4, 4),
                textcoords="offset points",
            )
        curve = (frontier or {}).get(name)
        if curve:
            xs, ys = zip(*sorted(curve), strict=True)
            ax.plot(xs, ys, color="tab:blue", alpha=0.5, label="calibration frontier (train)")
        oracle = report["baselines"]["oracle"]
        ax.scatter(
            oracle["cost_per_query"],
            oracle["quality"],
            marker="*",
            s=160,
            color="tab:green",
            label="oracle",
            zorder=4,
        )
        ax.scatter(
            report["cost_per_query"],
            report["quality"],
            marker="D",
            s=80,
            color="tab:red",
            label="cascade",
            zorder=5,
        )
        top = report["baselines"]["always_top"]
        ax.axhline(
            top["quality"], color="grey", linestyle=":", linewidth=1, label="always-top quality"
        )
        ax.set_xscale("log")
        ax.set_xlabel("cost per query (USD, log scale)")
        ax.set_ylabel("quality (mean recorded score)")
        where = f" [{data} data, n={report['n']}]" if data else f" [n={report['n']}]"
        ax.set_title(
            f"{name}{where}: cascade {report['cost_per_query'] / top['cost_per_query']:.0%} of "
            f"top cost, {report['quality'] / top['quality']:.0%} of top quality"
            if top["cost_per_query"] and top["quality"]
            else name + where,
            fontsize=10,
        )
        ax.legend(fontsize=8, loc="lower right")
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
