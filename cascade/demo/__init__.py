"""The data ``cascade demo`` runs on: 300 recorded GSM8K queries and the config that uses them.

Shipped in the package (wheel and sdist) so that a first run needs neither keys nor network.
Attribution and licence: ``NOTICE.md`` beside this file.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DATASET", "DEMO_CONFIG", "NOTICE"]

_HERE = Path(__file__).resolve().parent
DATASET = _HERE / "gsm8k-300.jsonl.gz"
DEMO_CONFIG = _HERE / "demo.yaml"
NOTICE = _HERE / "NOTICE.md"
