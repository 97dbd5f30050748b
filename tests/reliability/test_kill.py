"""SIGKILL mid-write: no partial output is ever taken for complete, and a rerun gives the
result of an uninterrupted run.

- Unit level: a process writing through :mod:`domainllm.io` (a slow chunked file, a
  folder, a large Parquet file) is SIGKILLed while its bytes are going out: the earlier
  version of the output is intact, no partial file has the output's name, and the next
  write removes the dead writer's temporary.
- Workflow level (slow): Snakemake runs config/test.yaml towards CPT and the whole
  process group is SIGKILLed three times, each time while a job is committing an output:
  between the two renames of a multi-output job (clean_corpus), while a shard folder and
  while the CPT model folder are being put in place. Each time Snakemake refuses the
  output as incomplete or plans the job again; the final rerun's artifacts are
  byte-identical to an uninterrupted run's.

The pause is injected from outside the package: a ``sitecustomize`` module on the jobs'
PYTHONPATH wraps ``os.replace`` so that the rename onto a chosen output writes a mark and
sleeps, and the test kills everything once the mark appears.

Training killed after a checkpoint and resumed is tested in
tests/unit/test_train_cpt.py (resume) and tests/unit/test_train_cpt_distributed.py
(SIGKILL of every rank, then the same final step).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from domainllm.io import atomic_path
from domainllm.verify import verify
from tests.conftest import REPO, make_workdir, snakemake
from tests.reliability._runs import digest, tiny_run

WRITERS = {
    # Writes slowly in chunks until killed: the kill lands while bytes are going out.
    "file": """
import sys, time
from domainllm.io import atomic_path
with atomic_path(sys.argv[1]) as tmp, open(tmp, "wb") as f:
    for i in range(100000):
        f.write(b"new" * 100000)
        f.flush()
        time.sleep(0.01)
""",
    "folder": """
import sys, time
from domainllm.io import atomic_path
with atomic_path(sys.argv[1], directory=True) as tmp:
    for i in range(100000):
        (tmp / f"part-{i:05d}.bin").write_bytes(b"new" * 10000)
        time.sleep(0.01)
""",
    # A real writer on a large table: killed as soon as its temporary appears.
    "parquet": """
import sys
import numpy as np, polars as pl
from domainllm.io import write_parquet
rng = np.random.default_rng(0)
df = pl.DataFrame({"a": rng.random(12_000_000), "b": rng.random(12_000_000)})
print("ready", flush=True)
write_parquet(df, sys.argv[1])
""",
}


def temporaries(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f".{path.name}.tmp-*"))


def old_version(path: Path, kind: str) -> bytes | None:
    """Write the 'earlier build' of ``path`` and return its bytes (a folder: its one file)."""
    if kind == "folder":
        path.mkdir(parents=True)
        (path / "old.bin").write_bytes(b"old")
        return b"old"
    if kind == "parquet":
        pl.DataFrame({"a": [1.0], "b": [2.0]}).write_parquet(path)
    else:
        path.write_bytes(b"old")
    return path.read_bytes()


@pytest.mark.parametrize("kind", list(WRITERS))
@pytest.mark.parametrize("earlier", [True, False], ids=["over-earlier", "fresh"])
def test_sigkill_mid_write_leaves_no_partial_output(tmp_path, kind, earlier):
    out = tmp_path / "results" / ("table.parquet" if kind == "parquet" else f"out.{kind}")
    out.parent.mkdir(parents=True)
    before = old_version(out, kind) if earlier else None
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITERS[kind], str(out)], env=env, stdout=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 120
        while not any(t.exists() and _started(t) for t in temporaries(out)):
            assert proc.poll() is None, f"the writer ended before it was killed ({proc.poll()})"
            assert time.monotonic() < deadline, "no temporary appeared"
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL  # killed mid-write, not finished
    assert len(temporaries(out)) == 1  # the partial bytes went only to the temporary
    if earlier:
        now = (out / "old.bin").read_bytes() if kind == "folder" else out.read_bytes()
        assert now == before  # the earlier version is untouched
        if kind == "folder":
            assert [p.name for p in out.iterdir()] == ["old.bin"]
        if kind == "parquet":
            assert pl.read_parquet(out).height == 1
    else:
        assert not out.exists()
    report = verify(tmp_path / "results")
    assert report.ok and [Path(p).name for p, _ in report.warnings] == [
        temporaries(out)[0].name
    ]  # fmt: skip
    # The rerun replaces the output and clears the dead writer's temporary.
    with atomic_path(out, directory=kind == "folder") as tmp:
        (tmp / "new.bin" if kind == "folder" else tmp).write_bytes(b"new")
    assert temporaries(out) == []
    assert (out / "new.bin" if kind == "folder" else out).read_bytes() == b"new"


def _started(tmp: Path) -> bool:
    """The temporary holds some bytes (a folder: at least one file)."""
    try:
        return any(tmp.iterdir()) if tmp.is_dir() else tmp.stat().st_size > 0
    except FileNotFoundError:
        return False


# --------------------------------------------------------------------------- Snakemake

SITECUSTOMIZE = '''
"""Test hook (tests/reliability/test_kill.py): pause the rename onto a chosen output."""
import fnmatch
import os
import time

_AT = os.environ.get("DOMAINLLM_TEST_PAUSE_AT")
if _AT:
    _replace = os.replace

    def _pausing_replace(src, dst, *args, **kwargs):
        name = os.path.basename(os.fspath(src))
        if ".tmp-" in name and fnmatch.fnmatch(os.path.abspath(os.fspath(dst)), _AT):
            with open(os.environ["DOMAINLLM_TEST_PAUSE_MARK"], "w") as f:
                f.write(f"{os.getpid()} {os.fspath(dst)}\\n")
            time.sleep(3600)
        return _replace(src, dst, *args, **kwargs)

    os.replace = _pausing_replace
'''

MODEL = "results/models/tiny-test"


def snakemake_cmd(*args: str) -> list[str]:
    """Snakemake with the local profile, as tests.conftest.snakemake runs it."""
    local = str(REPO / "profiles" / "local")
    snakefile = str(REPO / "Snakefile")
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        snakefile,
        "--workflow-profile",
        local,
        *args,
    ]


def run_and_kill(work: Path, hook: Path, pause_at: str, target: str, *, whole_run: bool) -> str:
    """Run Snakemake towards ``target``; once a job is about to rename its temporary onto
    a path matching ``pause_at``, SIGKILL the job's process (as the OOM killer would) or,
    with ``whole_run``, Snakemake's whole process group (a node or session lost). The
    path the job was committing."""
    mark = work.parent / f"paused-{time.monotonic_ns()}"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]),
        "DOMAINLLM_TEST_PAUSE_AT": pause_at,
        "DOMAINLLM_TEST_PAUSE_MARK": str(mark),
    }
    args = (target, "--cores", "2", "--configfile", "config/test.yaml")
    log_path = work.parent / "killed-runs.log"
    log = open(log_path, "ab")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        snakemake_cmd(*args), cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 1500
        while not (mark.exists() and mark.read_text().endswith("\n")):
            if proc.poll() is not None:
                log.flush()
                tail = log_path.read_text()[-3000:]
                ended = f"Snakemake ended ({proc.returncode}) before {pause_at}"
                raise AssertionError(f"{ended}:\n{tail}")
            assert time.monotonic() < deadline, f"no job reached {pause_at}"
            time.sleep(0.2)
        pid, path = mark.read_text().split(maxsplit=1)
        if whole_run:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
            deadline = time.monotonic() + 30  # the others die (and are reaped) shortly
            while _group_members(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert _group_members(proc.pid) == [], "a process of the run survived"
        else:
            os.kill(int(pid), signal.SIGKILL)
            assert proc.wait(timeout=900) != 0  # Snakemake saw the job fail
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    return path.strip()


def _group_members(pgid: int) -> list[int]:
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


def planned(work: Path, target: str, *extra: str) -> subprocess.CompletedProcess:
    return snakemake(
        target, "-n", "--cores", "1", *extra, "--configfile", "config/test.yaml",
        cwd=work, check=False,
    )  # fmt: skip


# Compared with the uninterrupted run: the data, the shards and the CPT model (not
# train_metrics.json or the loss plot, which hold timings and where training resumed).
COMPARED = [
    "results/corpus/docs.parquet",
    "results/corpus/clean.parquet",
    "results/corpus/dropped_samples.jsonl",
    "results/corpus/selected.parquet",
    f"{MODEL}/cpt/model.safetensors",
    f"{MODEL}/cpt/config.json",
    f"{MODEL}/cpt/tokenizer.json",
    f"{MODEL}/cpt/generation_config.json",
]


@pytest.mark.slow
def test_killed_jobs_leave_nothing_accepted_and_the_rerun_matches(tmp_path, tmp_path_factory):
    reference = tiny_run(tmp_path_factory, "a")
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    (tmp_path / "work").mkdir()
    work = make_workdir(tmp_path / "work")
    corpus = work / "results" / "corpus"
    stats = "*/results/corpus/stats.json"

    # 1. The clean_corpus job is killed (Snakemake lives on) between its two renames:
    #    Snakemake deletes the output the job had already put in place.
    run_and_kill(work, hook, stats, "cpt", whole_run=False)
    assert not (corpus / "clean.parquet").exists() and not (corpus / "stats.json").exists()
    assert (corpus / "docs.parquet").exists()  # the finished job upstream is kept
    assert "clean_corpus" in planned(work, "cpt").stdout

    # 2. The same moment, but the whole run dies: clean.parquet is left in place, and
    #    Snakemake's incomplete marker keeps it from being accepted.
    run_and_kill(work, hook, stats, "cpt", whole_run=True)
    assert (corpus / "clean.parquet").exists() and not (corpus / "stats.json").exists()
    assert temporaries(corpus / "stats.json")
    refused = planned(work, "cpt", "--workflow-profile", "none")  # no rerun-incomplete
    text = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "IncompleteFilesException" in text, text[-2000:]
    assert "results/corpus/clean.parquet" in text
    plan = planned(work, "cpt")  # profiles/local reruns incomplete jobs
    assert re.search(r"rule clean_corpus:(.|\n)*?reason: Forced execution", plan.stdout)
    assert "Directory cannot be locked" in plan.stdout + plan.stderr  # the dead run's lock
    snakemake("--unlock", "--configfile", "config/test.yaml", cwd=work)

    # 3. The whole run dies while write_shards puts its folder in place.
    path = run_and_kill(work, hook, "*/results/shards/*", "cpt", whole_run=True)
    shards = work / path
    assert not shards.exists() and temporaries(shards)
    assert (corpus / "stats.json").exists()
    assert not temporaries(corpus / "stats.json")  # the rerun cleared the dead temporary
    assert "rule write_shards:" in planned(work, "cpt").stdout
    snakemake("--unlock", "--configfile", "config/test.yaml", cwd=work)

    # 4. The whole run dies while train_cpt, trained, puts the model folder in place.
    run_and_kill(work, hook, f"*/{MODEL}/cpt", "cpt", whole_run=True)
    cpt = work / MODEL / "cpt"
    assert not cpt.exists() and temporaries(cpt)
    assert (work / "results/checkpoints/tiny-test/cpt/checkpoint-30").is_dir()
    assert "rule train_cpt:" in planned(work, "cpt").stdout
    snakemake("--unlock", "--configfile", "config/test.yaml", cwd=work)

    # 5. The rerun finishes from the checkpoint; its artifacts are the uninterrupted run's.
    snakemake("cpt", "--cores", "2", "--configfile", "config/test.yaml", cwd=work, timeout=1500)
    metrics = json.loads((cpt / "train_metrics.json").read_text())
    assert metrics["resumed_from"].endswith("checkpoint-30") and metrics["steps"] == 30
    done = planned(work, "cpt")
    assert "Nothing to be done" in done.stdout + done.stderr
    got = {p: digest(work / p) for p in [*COMPARED, path]}
    want = {p: digest(reference / p) for p in [*COMPARED, path]}
    assert got == want
    report = verify(work / "results")
    assert report.ok and report.warnings == [], report.summary()
