"""Convert public LLM-routing datasets into the replay format of ``cascade.providers.dataset``.

``import_dataset("routerbench", source, "rb.jsonl", split="test")`` reads a local folder laid
out like upstream, or fetches the files from a URL (the pinned upstream folder, or any base URL
that mirrors it), converts them and writes JSONL. Every estimate or choice the conversion makes
(token counts, prices, dropped rows, the split) is returned in ``ImportSummary.assumptions`` and
printed through ``say``. Each importer's module docstring documents its source and default URL.

The data is not redistributable with this package: AlpacaEval is CC BY-NC 4.0 and RouterBench
declares no license.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cascade.errors import DatasetError
from cascade.providers.dataset import write_dataset
from cascade.replay.importers import alpacaeval, routellm, routerbench
from cascade.replay.importers.base import SPLITS, Importer, download, is_url, local_root

__all__ = ["IMPORTERS", "PRICES", "ImportSummary", "Importer", "import_dataset"]

IMPORTERS: dict[str, Importer] = {
    imp.name: imp for imp in (routellm.IMPORTER, routerbench.IMPORTER, alpacaeval.IMPORTER)
}

PRICES: dict[str, dict[str, tuple[float, float]]] = {
    name: dict(imp.prices) for name, imp in IMPORTERS.items()
}
"""Dataset name -> model -> (input, output) USD per 1M tokens, as used for ``cost_usd``."""


@dataclass(frozen=True, slots=True)
class ImportSummary:
    """What an import wrote.

    Attributes:
        name: The importer name.
        out: The JSONL file written.
        records: Records written.
        skipped: Source rows of the requested split(s) left out for data reasons
            (contaminated, unscored, duplicated), not rows of the other split.
        models: The models that have responses, in price order where the source has one.
        assumptions: One line per estimate or choice made, as printed.
    """

    name: str
    out: Path
    records: int
    skipped: int
    models: tuple[str, ...]
    assumptions: tuple[str, ...]


def import_dataset(
    name: str,
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    split: str = "all",
    seed: int = 0,
    say: Callable[[str], None] = print,
) -> ImportSummary:
    """Convert one dataset into a replay JSONL file.

    Args:
        name: A key of ``IMPORTERS``: ``routellm-gsm8k``, ``routerbench`` or ``alpacaeval``.
        source: A local folder, or an ``http(s)://`` URL of the upstream folder (each
            importer's ``default_url``) or of a mirror with the same layout.
        out: The JSONL file to write (``.gz`` for gzip); parent folders are created.
        split: ``train``, ``test`` or ``all``. Every record carries ``meta.split`` either way.
        seed: Seed of the train/test shuffle where the source has no split of its own.
        say: Receives one line per assumption (and download progress).

    Returns:
        The summary of what was written.

    Raises:
        DatasetError: Unknown name or split, a missing folder or file, a failed download, or
            source data that does not have the expected shape.
    """
    importer = IMPORTERS.get(name)
    if importer is None:
        raise DatasetError(f"unknown dataset {name!r} (known: {', '.join(IMPORTERS)})")
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
    source_text = os.fspath(source)
    with tempfile.TemporaryDirectory(prefix="cascade-import-") as tmp:
        if is_url(source_text):
            root = download(importer, source_text, Path(tmp), say)
        else:
            root = local_root(importer, Path(source_text).expanduser())
        converted = importer.convert(root, split=split, seed=seed)
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    count = write_dataset(out_path, converted.records)
    for line in converted.assumptions:
        say(line)
    return ImportSummary(
        name=name,
        out=out_path,
        records=count,
        skipped=converted.skipped,
        models=converted.models,
        assumptions=converted.assumptions,
    )
