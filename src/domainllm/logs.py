"""Logging set-up for entry points: one log file per job, progress on stderr."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextlib.contextmanager
def log_to(path: str | None) -> Iterator[None]:
    """Send logging records and stderr (progress bars, tracebacks) to ``path``.

    Used by every Snakemake script so that each rule's ``log:`` file holds the
    whole story of the job, including the traceback of a failure.
    """
    if path is None:
        logging.basicConfig(level=logging.INFO, format=FORMAT, force=True)
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", buffering=1, encoding="utf-8") as f:
        old_stderr = sys.stderr
        sys.stderr = f
        logging.basicConfig(level=logging.INFO, format=FORMAT, stream=f, force=True)
        try:
            yield
        except BaseException:
            logging.getLogger("domainllm").exception("job failed")
            raise
        finally:
            sys.stderr = old_stderr
