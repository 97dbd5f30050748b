"""config/test.yaml end to end on a real single-node SLURM cluster, through the user's profile.

The cluster (tests/slurm/cluster.py: munge, MariaDB, slurmdbd, slurmctld, slurmd, all
under a temporary folder) has partitions ``cpu`` (default) and ``gpu`` on one node with
a fake GPU. The profile is installed the way users install it (``make slurm-profile``)
and the workflow runs with the bare ``snakemake --profile slurm``. ``sacct`` then shows
every job completed under the account, in the partition its ``gpu`` resource asks for,
and one job killed for using more memory than its first attempt asked for and run
again, successfully, with more (issue 8: a failed job is retried with more memory).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, make_workdir
from tests.slurm.cluster import LocalSlurm, unavailable

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

ACCOUNT = "domainllm-test"
# A cheap early rule whose first attempt asks for less memory than any job takes
# (the job's own Snakemake alone needs more), so SLURM kills it; the retry asks for
# 2000 MB. The profile's GPU rules scale the same way ("64000 * attempt").
RETRIED_RULE = "prepare_domain"
RETRIED_MEM = "100 if attempt == 1 else 1000 * attempt"
SACCT_FIELDS = ["JobID", "Partition", "Account", "State", "Elapsed", "ReqMem", "ReqTRES", "Comment"]


@pytest.fixture(scope="module")
def root():
    """A folder of its own: pytest removes old basetemp folders when other sessions
    start, which would pull the running cluster's state from under it."""
    path = Path(tempfile.mkdtemp(prefix="domainllm-slurm-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(root):
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    slurm = LocalSlurm(root / "cluster", account=ACCOUNT)
    try:
        slurm.start()
        yield slurm
    finally:
        slurm.stop()


def _clone(work: Path) -> Path:
    """A folder that looks like a clone: the bare `snakemake` finds the Snakefile there."""
    work.mkdir()
    make_workdir(work)
    for name in ("Snakefile", "rules", "scripts", "envs", "profiles"):
        (work / name).symlink_to(REPO / name)
    return work


@pytest.fixture(scope="module")
def run(cluster, root):
    xdg = root / "xdg"
    env = {
        **cluster.env,
        "XDG_CONFIG_HOME": str(xdg),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    subprocess.run(
        ["make", "-s", "slurm-profile", f"ACCOUNT={ACCOUNT}", "CPU_PARTITION=cpu"]
        + ["GPU_PARTITION=gpu"],
        cwd=REPO,
        env=env,
        check=True,
    )
    # Edits a user might make: the first status check after 1 s instead of 40 s (the
    # executor adds 10 s after each check that finds nothing finished and starts over
    # when one has; jobs here take seconds); the retried rule's memory. Jobs beyond
    # the node's 2 CPUs wait in SLURM's queue.
    profile = xdg / "snakemake/slurm/config.yaml"
    settings = yaml.safe_load(profile.read_text())
    settings["slurm-init-seconds-before-status-checks"] = 1
    settings["set-resources"][RETRIED_RULE] = {"mem_mb": RETRIED_MEM}
    profile.write_text(yaml.safe_dump(settings, sort_keys=False))

    work = _clone(root / "work")
    start = time.monotonic()
    proc = subprocess.run(
        ["snakemake", "--profile", "slurm", "--configfile", "config/test.yaml"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    log = proc.stdout + proc.stderr
    (work / "snakemake.log").write_text(log)
    print(f"snakemake --profile slurm: {time.monotonic() - start:.0f} s")
    assert proc.returncode == 0, log[-8000:]
    jobs = cluster.sacct(SACCT_FIELDS, "--units=M")
    for job in jobs:  # shown with -s or when a test fails
        print(" ".join(f"{k}={v}" for k, v in job.items() if k != "ReqTRES"))
    return work, log, jobs


def _rule(job: dict[str, str]) -> str:
    return job["Comment"].removeprefix("rule_").split("_wildcards_")[0]


def _declared_gpus(log: str) -> Counter:
    """(rule, gpu) per job as Snakemake printed it when it submitted the job."""
    declared = Counter()
    rule = None
    for line in log.splitlines():
        if m := re.match(r"\s*(local)?(rule|checkpoint) (\w+):", line):
            rule = None if m.group(1) else m.group(3)
        elif rule and line.strip().startswith("resources:"):
            gpu = re.search(r"\bgpu=(\d+)", line)
            declared[rule, int(gpu.group(1)) if gpu else 0] += 1
            rule = None
    return declared


def test_the_workflow_completes_on_the_cluster(run):
    work, log, _ = run
    assert "steps (100%) done" in log
    assert (work / "results/eval/table.md").read_text().strip()
    assert (work / "results/models/tiny-test/sft-gptq/config.json").exists()


def test_every_job_ran_under_the_account_in_the_partition_its_gpu_request_fits(run):
    _, log, jobs = run
    submitted = _declared_gpus(log)
    assert submitted, "no job submissions in the log"
    ran = Counter((_rule(j), int("gres/gpu" in j["ReqTRES"])) for j in jobs)
    # Every submission (the retry included) is one allocation with its GPU request.
    assert ran == Counter({(r, min(g, 1)): n for (r, g), n in submitted.items()}), (ran, submitted)
    for job in jobs:
        assert job["Account"] == ACCOUNT, job
        wants_gpu = "gres/gpu" in job["ReqTRES"]
        assert job["Partition"] == ("gpu" if wants_gpu else "cpu"), job
    gpu_rules = {r for (r, g) in ran if g}
    # The rules that train, quantise and run models declare a GPU, and so does a job
    # whose GPU depends on the config (the BERT evaluator).
    assert {"train_cpt", "train_sft", "quantize_gptq", "generate", "evaluate_version"} <= gpu_rules
    assert "train_evaluator" in gpu_rules
    assert {"ingest_corpus", "clean_corpus", "write_shards", "eval_table"} <= {
        r for (r, g) in ran if not g
    }


def test_a_job_killed_for_memory_is_retried_with_more_and_succeeds(run):
    work, _, jobs = run
    attempts = sorted((j for j in jobs if _rule(j) == RETRIED_RULE), key=lambda j: int(j["JobID"]))
    assert [j["State"] for j in attempts][1:] == ["COMPLETED"], attempts
    first, second = attempts
    assert first["State"] in ("OUT_OF_MEMORY", "FAILED"), first
    assert float(first["ReqMem"].rstrip("M")) == 100
    assert float(second["ReqMem"].rstrip("M")) == 2000
    # SLURM says why: the failed attempt's log is kept by the executor.
    (slurm_log,) = (work / ".snakemake/slurm_logs").rglob(f"{first['JobID']}.log")
    assert "exceeded memory limit" in slurm_log.read_text()
    # Nothing else failed.
    others = [j for j in jobs if j is not first]
    assert all(j["State"] == "COMPLETED" for j in others), [
        j for j in others if j["State"] != "COMPLETED"
    ]
