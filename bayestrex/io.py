"""Files and tables: atomic writes (results, figures, JSON), strict JSON, markdown tables."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_path", "write_json", "markdown_table"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; on success it is synced to disk (``fsync``) and replaces ``path`` in
    one step (``os.replace``).

    Readers never see a half-written file, and a failure leaves the old file (or none) in place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make results unreadable to the rest of a team
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)  # the rename itself
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _fsync(path) -> None:
    """Flush ``path`` (a file, or a folder's entries) to disk; folders that cannot be opened are skipped."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder
        pass
    finally:
        os.close(fd)


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """Rows of dicts as a markdown table (floats to 3 significant digits, ``None`` as an en dash)."""
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))  # every key, in first-seen order
    fmt = lambda v: "–" if v is None else (f"{v:.3g}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_json(obj, path: str | os.PathLike) -> None:
    """Write ``obj`` as strict JSON (NaN and ±inf become null), atomically."""
    import json
    import math

    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(clean(obj), indent=2, allow_nan=False) + "\n")
