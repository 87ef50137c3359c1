"""Paths written in a config file: relative ones resolve against the file's folder; and reading
the files they name (a fitted model, a schema) with a byte cap."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cascade.errors import ConfigError

__all__ = ["read_capped", "resolve_path"]

_CHUNK = 1 << 20


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


def read_capped(path: str | os.PathLike[str], limit: int, *, regular: bool = True) -> bytes:
    """The bytes of the file at ``path``, refused once they pass ``limit``.

    A size from ``stat`` cannot be trusted (``/dev/zero`` says 0 and never ends), so the read
    itself stops at ``limit + 1`` bytes. The file is opened without blocking, so a FIFO that no
    one writes cannot hang the open; with ``regular`` (model files, schemas) anything but a
    regular file is refused, as a FIFO may also never finish.

    Raises:
        ConfigError: a one-line reason, without the path (the caller names the file and key).
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise ConfigError(exc.strerror or str(exc)) from exc
    try:
        if regular and not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError("not a regular file")
        if not regular and hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)  # a pipe's writer may be slow; with none, read() ends
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, min(_CHUNK, limit + 1 - size)):
            size += len(chunk)
            if size > limit:
                raise ConfigError(f"larger than {limit:,} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise ConfigError(exc.strerror or str(exc)) from exc
    finally:
        os.close(fd)
