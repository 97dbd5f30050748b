"""Run a workflow script as Snakemake's ``script:`` directive does, without the DAG.

Snakemake runs ``scripts/<rule>.py`` in a fresh interpreter with a global
``snakemake`` object (input, output, params, log, threads, wildcards, resources
as named lists). This does the same from a JSON spec, so the reliability tests
exercise the real script, its argument mapping and its exit status in seconds,
without building the rule's upstream artifacts.

Usage:
    python tests/reliability/_script.py RULE SPEC.json

SPEC keys: ``input``, ``output``, ``params``, ``wildcards``, ``resources`` (mappings;
a list value is a named list, as Snakemake gives it), ``log`` (a list of paths),
``threads`` (int), and ``fault``: ``"enospc"`` makes every Parquet write fail
half-way with ``OSError(ENOSPC)``, as a full disk does (the partial bytes stay
where the writer put them).
"""

from __future__ import annotations

import errno
import json
import os
import runpy
import sys
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[2]


def _named(mapping: dict | None):
    from snakemake.iocontainers import Namedlist

    return Namedlist(fromdict=dict(mapping or {}))


def _disk_full() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _inject_enospc() -> None:
    """Parquet writers (polars, pyarrow) write half their bytes, then fail like a full disk."""
    import polars as pl
    import pyarrow.parquet as pq

    polars_write = pl.DataFrame.write_parquet

    def write_parquet(self, file, *args, **kwargs):
        polars_write(self, file, *args, **kwargs)
        path = Path(file)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        raise pl.exceptions.ComputeError(
            "parquet: File out of specification: underlying IO error: "
            "No space left on device (os error 28)"
        )

    pyarrow_write = pq.ParquetWriter.write_table

    def write_table(self, table, *args, **kwargs):
        pyarrow_write(self, table.slice(0, max(1, table.num_rows // 2)), *args, **kwargs)
        raise _disk_full()

    pl.DataFrame.write_parquet = write_parquet
    pq.ParquetWriter.write_table = write_table


def main(argv: list[str]) -> None:
    rule, spec_path = argv
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    if spec.get("fault") == "enospc":
        _inject_enospc()
    elif spec.get("fault"):
        raise SystemExit(f"unknown fault {spec['fault']!r}")
    smk = SimpleNamespace(
        input=_named(spec.get("input")),
        output=_named(spec.get("output")),
        params=_named(spec.get("params")),
        wildcards=_named(spec.get("wildcards")),
        resources=_named(spec.get("resources")),
        log=list(spec.get("log") or []),  # positional only: snakemake.log[0]
        threads=int(spec.get("threads", 1)),
        rule=rule,
        config={},
        scriptdir=str(REPO / "scripts"),
    )
    runpy.run_path(str(REPO / "scripts" / f"{rule}.py"), {"snakemake": smk}, "__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
