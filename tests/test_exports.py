"""The package's public surface is exactly its __all__, and each name really exists."""

from __future__ import annotations

import cascade


def test_all_matches_public_names() -> None:
    """__all__ lists every public name of the package and nothing else."""
    public = {n for n in vars(cascade) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(cascade, n)).__name__ == "module"}
    assert set(cascade.__all__) == public - modules - {"annotations"}


def test_exception_tree() -> None:
    """Every error the package raises on purpose derives from CascadeError."""
    for name in ("ConfigError", "PluginNotFound", "DatasetError", "ProviderError",
                 "EvaluatorError", "BudgetExceeded", "CascadeExhausted"):
        assert issubclass(getattr(cascade, name), cascade.CascadeError)
    assert issubclass(cascade.PluginNotFound, cascade.ConfigError)
