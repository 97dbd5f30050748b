"""Logging set-up for entry points: one log file per job, progress on stderr."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

from domainllm.errors import PipelineError

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextlib.contextmanager
def log_to(path: str | None) -> Iterator[None]:
    """Send logging records and stderr (progress bars, tracebacks) to ``path``.

    Used by every Snakemake script so that each rule's ``log:`` file holds the
    whole story of the job, including the traceback of a failure.

    Bad input (a :class:`~domainllm.errors.PipelineError`, whose message names the
    file, line or config key) is not a bug: it ends the job with exit status 1 and
    one line, ``error: <message>``, in the log and on stderr, with no traceback.
    Any other exception is logged with its traceback and propagates.
    """
    if path is None:
        logging.basicConfig(level=logging.INFO, format=FORMAT, force=True)
        try:
            yield
        except PipelineError as e:
            _exit_with(e, sys.stderr)
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", buffering=1, encoding="utf-8") as f:
        old_stderr = sys.stderr
        sys.stderr = f
        logging.basicConfig(level=logging.INFO, format=FORMAT, stream=f, force=True)
        try:
            yield
        except PipelineError as e:
            logging.getLogger("domainllm").error("job failed on bad input")
            sys.stderr = old_stderr
            _exit_with(e, f, old_stderr)
        except BaseException:
            logging.getLogger("domainllm").exception("job failed")
            raise
        finally:
            sys.stderr = old_stderr


def _exit_with(error: PipelineError, *streams) -> None:
    """Write ``error: <message>`` to each stream and exit with status 1 (no traceback)."""
    line = f"error: {error}\n"
    for stream in streams:
        stream.write(line)
        stream.flush()
    raise SystemExit(1) from None
