"""Files and tables: atomic writes (results, figures, JSON), strict JSON, markdown tables."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path

__all__ = ["atomic_path", "write_json", "markdown_table", "write_results", "run_folder", "clean_temp_files"]

#: the lock file that :func:`run_folder` holds in a run folder (it contains the owner's pid)
LOCK_NAME = ".bayestrex.lock"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; on success it is synced to disk (``fsync``) and replaces ``path`` in
    one step (``os.replace``).

    Readers never see a half-written file, and a failure leaves the old file (or none) in place. The temporary
    file is hidden, ``.<name>.<random>.tmp``; one left by a killed process is removed by :func:`clean_temp_files`.
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


def clean_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Remove the hidden temporary files (``.<name>.<random>.tmp``) that a killed :func:`atomic_path` left in
    ``folder``; returns what was removed. Call it only while holding the folder (:func:`run_folder`)."""
    removed = []
    for p in Path(folder).glob(".*.tmp"):
        if p.is_file() and p.name.count(".") >= 3:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


@contextlib.contextmanager
def run_folder(path: str | os.PathLike, arg: str = "--out"):
    """Check, lock and clean the output folder of one run; yields it as a ``Path``.

    Before any work: ``path`` must be a folder (created when missing) that this process can write, else a
    ``ValueError`` naming ``arg``. A lock file (``.bayestrex.lock``, created with ``O_CREAT | O_EXCL``, holding the
    pid) keeps a second run out of the folder with a ``ValueError``; a lock whose process is gone is taken over.
    Temporary files a killed run left behind are removed. The lock is removed on exit, whatever happens.
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{arg} {folder} is a file, not a folder; pass a folder for the run's files")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{arg} {folder} cannot be created: {e.strerror or e}") from None
    lock = folder / LOCK_NAME
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            try:
                owner = int(lock.read_text().strip() or "0")
                fresh = time.time() - lock.stat().st_mtime < 10  # an empty fresh lock: its run is writing its pid
            except (OSError, ValueError):
                owner, fresh = 0, False
            if (owner and _pid_alive(owner)) or (not owner and fresh):
                raise ValueError(f"{arg} {folder} is in use by another bayestrex run (pid {owner or 'starting'}, "
                                 f"lock file {lock}); wait for it or pass another {arg}") from None
            with contextlib.suppress(FileNotFoundError):  # a stale lock: its process is gone
                lock.unlink()
        except OSError as e:
            raise ValueError(f"{arg} {folder} is not writable: {e.strerror or e}") from None
    else:
        raise ValueError(f"{arg} {folder}: could not take the lock file {lock}; another run is starting there")
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
        os.close(fd)
        clean_temp_files(folder)
        yield folder
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()


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


def write_results(folder: str | os.PathLike, stem: str, title: str, meta: dict, rows: list[dict],
                  columns: list[str] | None = None) -> str:
    """An analysis's table: ``folder/stem.json`` (``{"meta": meta, "rows": rows}``) and ``folder/stem.md`` (``# title``,
    the meta, the markdown table of ``columns``, by default every key), both atomically. Returns the markdown table."""
    folder = Path(folder)
    write_json(dict(meta=meta, rows=rows), folder / f"{stem}.json")
    md = markdown_table(rows, columns)
    with atomic_path(folder / f"{stem}.md") as tmp:
        tmp.write_text(f"# {title}\n\n{meta}\n\n{md}\n")
    return md
