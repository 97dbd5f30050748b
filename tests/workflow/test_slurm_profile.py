"""`make slurm-profile` makes the bare `snakemake --profile slurm` work from the repo root."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_bare_slurm_profile_name_resolves_after_the_one_time_step(tmp_path):
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    args = ["ACCOUNT=proj1", "CPU_PARTITION=short", "GPU_PARTITION=a100"]
    out = subprocess.run(
        ["make", "-s", "slurm-profile", *args], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    installed = tmp_path / "cfg/snakemake/slurm/config.yaml"
    text = installed.read_text()
    assert 'slurm_account: "proj1"' in text
    assert "slurm-partition-config: partitions.yaml" in text
    # Jobs are placed by their gpu resource among the partitions filled in here.
    partitions = yaml.safe_load(installed.with_name("partitions.yaml").read_text())["partitions"]
    assert partitions["short"]["max_gpu"] == 0 and partitions["a100"]["max_gpu"] > 0

    # A second call keeps the user's edits.
    installed.write_text(text + "\n# edited by the user\n")
    subprocess.run(["make", "-s", "slurm-profile"], cwd=REPO, env=env, check=True)
    assert installed.read_text().endswith("# edited by the user\n")

    snakemake = Path(sys.executable).with_name("snakemake")
    proc = subprocess.run(
        [str(snakemake), "--profile", "slurm", "-n", "--configfile", "config/test.yaml"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    assert "Using profile slurm " in log
    # No local profile on top: a workflow's profiles/default would override slurm's values.
    assert "workflow specific profile" not in log
    # Every job is charged to the account filled in (partitions are chosen at submission).
    assert re.search(r"slurm_account=proj1\b", log), log
