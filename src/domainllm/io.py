"""Atomic writes, checksums and line-numbered readers shared by every stage.

Every output is written to a temporary sibling and renamed into place, so a job
killed mid-write never leaves a file that Snakemake or a later stage accepts.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from domainllm.errors import DataError, PipelineError

# How libraries report a full disk or quota: OSError with errno ENOSPC/EDQUOT (Python,
# pyarrow), or only in the message (polars: "No space left on device (os error 28)").
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXT = ("no space left on device", "disk quota exceeded", "os error 28")


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _remove_stale_temporaries(path: Path) -> None:
    """Remove ``path``'s temporaries left by writers that were killed (their process is
    gone on this machine), so reruns after a SIGKILL do not pile them up."""
    prefix = f".{path.name}.tmp-"
    with os.scandir(path.parent) as entries:
        stale = [e.path for e in entries if e.name.startswith(prefix)]
    for p in stale:
        pid = p.rsplit(".tmp-", 1)[1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            _remove(Path(p))


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (one of another user's counts: PermissionError)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` on success.

    Args:
        path: final file or folder.
        directory: create the temporary path as a folder (for ``save_pretrained`` outputs).

    On an exception the temporary path is removed and ``path`` is left untouched
    (an earlier version of it survives). A full disk or quota becomes a
    ``PipelineError`` naming ``path``.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(final)
    _remove(tmp)
    _remove_stale_temporaries(final)
    if directory:
        tmp.mkdir()
    try:
        yield tmp
        # Its sha256 for `domainllm verify`, recorded before the rename so a record
        # never vouches for a partial write (only under a results folder with .checksums/).
        from domainllm.verify import record_checksum

        record_checksum(tmp, final)
        if directory:
            _remove(final)
        os.replace(tmp, final)
    except BaseException as e:
        full = isinstance(e, Exception) and disk_full(e, final.parent)
        _remove(tmp)
        if full:
            raise PipelineError(
                f"{final}: no space left on the device while writing it ({e}); the partial "
                "file was removed and any earlier version is untouched: free space there "
                "(or point config key paths.results elsewhere) and rerun"
            ) from e
        raise


def disk_full(error: BaseException, directory: str | os.PathLike | None = None) -> bool:
    """Whether ``error`` (raised while writing) means the disk or quota is full.

    Errors that do not say so themselves (numpy's ``tofile`` reports a short write)
    count when ``directory``'s file system has no space left for ordinary users.
    """
    if isinstance(error, PipelineError):
        return False
    if isinstance(error, OSError) and error.errno in _DISK_FULL_ERRNOS:
        return True
    if any(t in str(error).lower() for t in _DISK_FULL_TEXT):
        return True
    if isinstance(error, OSError) and directory is not None:
        try:
            st = os.statvfs(directory)
        except OSError:
            return False
        return st.f_bavail == 0
    return False


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_json(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` as indented UTF-8 JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=False) + "\n")


def write_text(text: str, path: str | os.PathLike) -> None:
    """Write ``text`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_parquet(df, path: str | os.PathLike) -> None:
    """Write a polars DataFrame to Parquet atomically (zstd, statistics on)."""
    with atomic_path(path) as tmp:
        df.write_parquet(tmp, compression="zstd", statistics=True)


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a parse error names the file, line and column."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 at byte {e.start}") from e
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from e


def open_text(path: str | os.PathLike):
    """Open a text file for reading, transparently decompressing ``.gz``."""
    p = str(path)
    if p.endswith(".gz"):
        return gzip.open(p, "rt", encoding="utf-8")
    return open(p, encoding="utf-8")


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSONL(.gz) file.

    Raises:
        DataError: naming the file and line of invalid UTF-8, invalid JSON, a
            non-object line, or a truncated compressed stream.
    """
    lineno = 0
    try:
        with open_text(path) as f:
            for lineno, line in enumerate(f, 1):  # noqa: B007 - used in the error message
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: invalid JSON: {e.msg}") from e
                if not isinstance(obj, dict):
                    raise DataError(
                        f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}"
                    )
                yield lineno, obj
    except UnicodeDecodeError as e:
        raise DataError(f"{path}:{lineno + 1}: not valid UTF-8 ({e.reason})") from e
    except (EOFError, gzip.BadGzipFile) as e:
        raise DataError(
            f"{path}: truncated or corrupt compressed file after line {lineno}: {e}"
        ) from e


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Return the hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
