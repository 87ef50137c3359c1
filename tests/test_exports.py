"""The package's public surface is exactly its __all__, and each name really exists."""

from __future__ import annotations

import pytest

import cascade


def test_all_matches_public_names() -> None:
    """__all__ lists every public name of the package and nothing else."""
    public = {n for n in dir(cascade) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(cascade, n)).__name__ == "module"}
    assert set(cascade.__all__) == public - modules - {"annotations"}


def test_every_name_in_all_resolves() -> None:
    """Each name of __all__ is importable from the package, the lazily loaded ones included."""
    from cascade import Cascade, Ledger
    from cascade.engine import Cascade as EngineCascade
    from cascade.ledger import Ledger as LedgerLedger

    assert (Cascade, Ledger) == (EngineCascade, LedgerLedger)
    for name in cascade.__all__:
        assert getattr(cascade, name) is not None


def test_an_unknown_name_is_an_attribute_error() -> None:
    """A name the package does not have raises AttributeError, as for any module."""
    with pytest.raises(AttributeError, match="Cascades"):
        cascade.Cascades  # type: ignore[attr-defined]  # noqa: B018


def test_exception_tree() -> None:
    """Every error the package raises on purpose derives from CascadeError."""
    for name in ("ConfigError", "PluginNotFound", "DatasetError", "ProviderError",
                 "EvaluatorError", "BudgetExceeded", "CascadeExhausted"):
        assert issubclass(getattr(cascade, name), cascade.CascadeError)
    assert issubclass(cascade.PluginNotFound, cascade.ConfigError)
