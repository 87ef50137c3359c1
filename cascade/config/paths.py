"""Paths written in a config file: relative ones resolve against the file's folder."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["resolve_path"]


def resolve_path(path: str, config_path: str | os.PathLike[str] | None) -> str:
    """A path written in a config file, relative to that file's folder (absolute stays as is).

    ``~`` is expanded. Without a config file (a config built in code) the path is left as given,
    and so is a URL (``postgresql://...``, ``sqlite:///...``), which is not a file path.
    """
    if "://" in path:
        return path
    expanded = Path(path).expanduser()
    if expanded.is_absolute() or config_path is None or path == ":memory:":
        return str(expanded) if path != ":memory:" else path
    return str(Path(config_path).parent / expanded)
