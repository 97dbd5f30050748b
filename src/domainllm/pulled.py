"""After ``dvc pull`` / ``dvc checkout``: mark the restored artifacts up to date for Snakemake.

DVC restores every artifact byte for byte but with new file times, and
Snakemake's ``mtime`` rerun trigger reads an input newer than its output as a
change: run right after a pull, ``snakemake`` would rebuild artifacts DVC has
just proved identical to the ones ``dvc.lock`` records. (Snakemake 9 does
compare checksums before trusting a newer mtime, but only for files under
``--max-checksum-file-size``, 1 MB by default, never for folders such as model
checkpoints, and only where its own metadata recorded them: a fresh clone has
none.)

``adopt_pulled`` first asks DVC whether the workspace matches ``dvc.lock``
(``dvc status --quiet``); only then does it run ``snakemake --touch`` over the
targets, which sets the outputs' times in DAG order without running any job.
If DVC reports a difference, nothing is touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from domainllm.errors import PipelineError

__all__ = ["adopt_pulled"]


def _tool(name: str) -> str:
    """The executable ``name`` of this environment (next to the Python running us), else PATH's."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise PipelineError(f"'{name}' is not installed in this environment or on PATH")
    return found


def adopt_pulled(
    targets: list[str] | None = None,
    *,
    profile: str = "profiles/local",
    cwd: str | os.PathLike = ".",
) -> None:
    """Check the workspace against ``dvc.lock``, then ``snakemake --touch`` the targets.

    Raises:
        PipelineError: DVC reports changed or missing artifacts (nothing is
            touched), or ``snakemake --touch`` failed.
    """
    status = subprocess.run(
        [_tool("dvc"), "status"], cwd=cwd, capture_output=True, text=True, check=False
    )
    clean = status.returncode == 0 and "up to date" in (status.stdout + status.stderr).lower()
    if not clean:
        raise PipelineError(
            "dvc status: the workspace differs from dvc.lock, so its artifacts are not the ones "
            "DVC recorded; nothing was touched (run `dvc pull` or `dvc checkout`, or rebuild):\n"
            + (status.stdout + status.stderr).strip()
        )
    touch = subprocess.run(
        [_tool("snakemake"), "--profile", profile, "--touch", *(targets or ["all"])],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    if touch.returncode != 0:
        raise PipelineError(
            f"snakemake --touch failed ({touch.returncode}):\n{touch.stderr.strip()[-3000:]}"
        )
