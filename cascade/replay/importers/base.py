"""What every importer shares: the importer record, source fetching, seeded splits, estimates."""

from __future__ import annotations

import csv
import json
import math
import random
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cascade.errors import DatasetError
from cascade.providers.dataset import ReplayRecord

Split = Literal["train", "test", "all"]
SPLITS: tuple[Split, ...] = ("train", "test", "all")
Prices = Mapping[str, tuple[float, float]]

TRAIN_FRACTION = 0.3
CHARS_PER_TOKEN = 4
_TIMEOUT_S = 60


@dataclass(frozen=True, slots=True)
class Converted:
    """An importer's output before it is written."""

    records: list[ReplayRecord]
    skipped: int
    models: tuple[str, ...]
    assumptions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Importer:
    """One dataset's converter and where its files live.

    Attributes:
        name: The CLI name, e.g. ``routerbench``.
        files: Paths the converter reads, relative to the dataset folder.
        default_url: The pinned upstream folder the files can be fetched from.
        prices: Model -> (input, output) USD per 1M tokens, as used for ``cost_usd``.
        convert: ``convert(root, split=..., seed=...)`` reads ``root / file`` for each file.
        subdir: A folder the files may sit in below the source (``gsm8k`` in a RouteLLM
            checkout), tried before the source itself.
    """

    name: str
    files: tuple[str, ...]
    default_url: str
    prices: Prices
    convert: Callable[..., Converted]
    subdir: str = ""


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def local_root(importer: Importer, source: Path) -> Path:
    """The folder holding the importer's files, below ``source`` or ``source`` itself."""
    if not source.is_dir():
        raise DatasetError(f"{source}: source folder not found")
    if importer.subdir and (source / importer.subdir / importer.files[0]).is_file():
        return source / importer.subdir
    return source


def download(importer: Importer, base: str, dest: Path, say: Callable[[str], None]) -> Path:
    """Fetch the importer's files below ``base`` into ``dest``, mirroring their paths."""
    base = base.rstrip("/")
    if importer.subdir:
        # The first file tells which of the two layouts the server has.
        nested = f"{base}/{importer.subdir}"
        try:
            _fetch(f"{nested}/{importer.files[0]}", dest / importer.files[0])
            base = nested
        except DatasetError:
            pass
    say(f"{importer.name}: downloading {len(importer.files)} file(s) from {base}")
    try:
        for rel in importer.files:
            target = dest / rel
            if not target.exists():
                _fetch(f"{base}/{rel}", target)
    except DatasetError as exc:
        # Offline is the usual cause: say where the files live and how to use a local copy.
        layout = ", ".join(importer.files)
        raise DatasetError(
            f"{exc}. Without network access, download the files ({layout}) from {base} on "
            f"another machine and pass their folder: cascade data import {importer.name} "
            "FOLDER OUT.jsonl"
        ) from exc
    return dest


def _fetch(url: str, target: Path) -> None:
    parts = urllib.parse.urlsplit(url)
    quoted = parts._replace(path=urllib.parse.quote(parts.path)).geturl()
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with (
            urllib.request.urlopen(quoted, timeout=_TIMEOUT_S) as response,
            target.open("wb") as fh,
        ):
            shutil.copyfileobj(response, fh)
    except (OSError, ValueError) as exc:  # URLError/HTTPError/timeouts are OSErrors
        target.unlink(missing_ok=True)
        raise DatasetError(f"{url}: download failed: {exc}") from exc


def need(root: Path, rel: str) -> Path:
    """``root / rel``, or a DatasetError naming the missing file."""
    path = root / rel
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    return path


def read_csv(path: Path, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows of a CSV with the 1-based line each row starts on; checks the header first."""
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            missing = [c for c in required if c not in header]
            if missing:
                raise DatasetError(f"{path}:1: missing column(s) {', '.join(map(repr, missing))}")
            start = reader.line_num + 1
            for row in reader:
                yield start, row
                start = reader.line_num + 1
    except (csv.Error, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: unreadable CSV: {exc}") from exc


def read_json(path: Path) -> Any:
    try:
        with path.open("rb") as fh:
            return json.load(fh)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: invalid JSON: {exc}") from exc


def read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if raw.strip():
                try:
                    yield lineno, json.loads(raw)
                except ValueError as exc:
                    raise DatasetError(f"{path}:{lineno}: invalid JSON: {exc}") from exc


def seeded_split(
    keys: Sequence[str], strata: Sequence[str], *, seed: int, train_fraction: float = TRAIN_FRACTION
) -> dict[str, Literal["train", "test"]]:
    """Assign each key to train or test: ``train_fraction`` of every stratum, by a seeded shuffle.

    Shuffling per stratum in sorted stratum order keeps the result a pure function of
    (keys, strata, seed): ``random.Random(int).shuffle`` is stable across CPython versions.
    """
    groups: dict[str, list[str]] = defaultdict(list)
    for key, stratum in zip(keys, strata, strict=True):
        groups[stratum].append(key)
    rng = random.Random(seed)
    out: dict[str, Literal["train", "test"]] = {}
    for stratum in sorted(groups):
        members = groups[stratum][:]
        rng.shuffle(members)
        cut = round(len(members) * train_fraction)
        out.update((key, "train") for key in members[:cut])
        out.update((key, "test") for key in members[cut:])
    return out


def est_tokens(text: str) -> int:
    """Token estimate where the source has none: ceil(chars / 4)."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def price_cost(input_tokens: int, output_tokens: int, price: tuple[float, float]) -> float:
    # Rounded so float noise does not make the JSONL longer than the information in it.
    return round((input_tokens * price[0] + output_tokens * price[1]) / 1_000_000, 12)


def fmt_prices(prices: Prices) -> str:
    return ", ".join(f"{m} {_n(i)}/{_n(o)}" for m, (i, o) in prices.items())


def _n(x: float) -> str:
    return f"{x:g}"
