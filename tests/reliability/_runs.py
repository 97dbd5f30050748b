"""Runs of config/test.yaml shared by the slow reliability tests (each made once a session).

``tiny_run(factory, "a")`` is the uninterrupted reference run the determinism test
compares a second run with and the kill test compares its interrupted-and-rerun
outputs with; both modules import this one module, so they share its cache.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from domainllm.verify import tree_sha256
from tests.conftest import make_workdir, snakemake

# Up to the evaluation table: corpus, base selection, shards, CPT, SFT, GPTQ, generation,
# evaluators, judge and the table (not the quantisation quality table or the validation).
TARGET = "results/eval/table.parquet"
_RUNS: dict[str, tuple[Path, float]] = {}


def tiny_run(tmp_path_factory, name: str) -> Path:
    """A working directory where config/test.yaml ran up to ``TARGET`` (once per name)."""
    if name not in _RUNS:
        work = make_workdir(tmp_path_factory.mktemp(f"tiny-{name}"))
        t0 = time.monotonic()
        snakemake(
            TARGET, "--cores", "2", "--configfile", "config/test.yaml", cwd=work, timeout=3000
        )
        _RUNS[name] = (work, time.monotonic() - t0)
    return _RUNS[name][0]


def run_seconds(name: str) -> float:
    return _RUNS[name][1]


def digest(path: Path) -> str:
    """sha256 of a file, or of a folder's relative paths and file contents."""
    return tree_sha256(path)


def digests(root: Path, paths: list[str]) -> dict[str, str]:
    return {p: digest(root / p) for p in paths}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
