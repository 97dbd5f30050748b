"""DVC reproduces the workflow: repro, no-op rerun, param change, experiments, push/pull.

Runs the real `dvc` on a fresh git repository holding a copy of the project
with config/test.yaml as its config (slow: the whole tiny chain runs once).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def sh(*cmd: str, cwd: Path, timeout: int = 1800) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-6000:]}")
    return out


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("dvc") / "project"
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for rel in files:
        src = REPO / rel
        if src.is_file() and not rel.startswith(("tests/", "bench/")):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    shutil.copy2(REPO / "config/test.yaml", dest / "config/config.yaml")
    sh("git", "init", "-q", cwd=dest)
    sh("git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A", cwd=dest)
    sh("git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init", cwd=dest)
    sh("dvc", "repro", cwd=dest, timeout=3000)
    return dest


def test_repro_builds_the_metrics(project):
    metrics = project / "results/eval/metrics.json"
    assert metrics.exists()
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"corpus", "selection", "cpt", "sft", "quantize", "evaluate"}


def test_second_repro_does_nothing_and_is_fast(project):
    t0 = time.perf_counter()
    out = sh("dvc", "repro", cwd=project)
    assert "Running stage" not in out, out
    assert time.perf_counter() - t0 < 60


def test_an_evaluation_param_reruns_only_evaluation(project):
    cfg_path = project / "config/config.yaml"
    original = cfg_path.read_text()
    cfg = yaml.safe_load(original)
    cfg["generate"]["max_new_tokens"] = 8
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    try:
        status = sh("dvc", "status", cwd=project)
        assert "evaluate" in status and "corpus:" not in status and "cpt:" not in status
        out = sh("dvc", "repro", cwd=project)
        assert "Running stage 'evaluate'" in out
        for stage in ("corpus", "selection", "cpt", "sft", "quantize"):
            assert f"Running stage '{stage}'" not in out
    finally:
        cfg_path.write_text(original)
        sh("dvc", "repro", cwd=project)


def test_experiment_with_a_set_param(project):
    import polars as pl

    sh("dvc", "exp", "run", "-S", "config/config.yaml:generate.max_new_tokens=4", cwd=project)
    # The experiment really ran with the new value: every answer is at most 4 tokens.
    gens = pl.read_parquet(project / "results/generations/sft.parquet")
    assert gens["output_tokens"].max() <= 4
    assert (
        yaml.safe_load((project / "config/config.yaml").read_text())["generate"]["max_new_tokens"]
        == 4
    )
    shown = sh("dvc", "exp", "show", "--no-pager", "--md", cwd=project)
    assert "max_new_tokens" in shown


def test_push_and_pull_through_a_local_remote(project, tmp_path):
    remote = tmp_path / "remote"
    sh("dvc", "remote", "add", "-f", "-d", "local", str(remote), cwd=project)
    sh("dvc", "push", cwd=project)
    table = project / "results/eval/table.parquet"
    before = table.read_bytes()
    table.unlink()
    shutil.rmtree(project / ".dvc/cache")
    sh("dvc", "pull", cwd=project)
    assert table.read_bytes() == before


def test_checked_out_artifacts_are_not_rebuilt(project, tmp_path):
    """dvc checkout gives new file times; `domainllm pulled` makes Snakemake accept the artifacts.

    Artifacts are deleted, the cache emptied and everything pulled back from a
    local remote: the restored files are byte-identical but newer than what
    was built from them, so Snakemake's mtime trigger would rebuild them.
    """
    remote = tmp_path / "remote"
    sh("dvc", "remote", "add", "-f", "-d", "local", str(remote), cwd=project)
    sh("dvc", "push", cwd=project)
    table = project / "results/eval/table.parquet"
    before = table.read_bytes()
    time.sleep(1.1)  # coarse file-time filesystems
    for rel in ("results/models", "results/eval/table.parquet", "results/selection/table.parquet"):
        path = project / rel
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    shutil.rmtree(project / ".dvc/cache")
    sh("dvc", "pull", cwd=project)
    assert table.read_bytes() == before
    stale = sh("snakemake", "--profile", "profiles/local", "-n", "all", cwd=project)
    assert "Nothing to be done" not in stale, "the restored files should look newer"
    # An artifact that no longer matches dvc.lock: refused, nothing touched.
    md = project / "results/eval/table.md"
    original = md.read_text()
    md.write_text(original + "\nedited\n")
    stamp = table.stat().st_mtime_ns
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(
        [str(BIN / "domainllm"), "pulled"], cwd=project, env=env, capture_output=True, text=True
    )
    assert proc.returncode != 0 and "differs from dvc.lock" in proc.stderr, proc.stderr
    assert table.stat().st_mtime_ns == stamp
    md.write_text(original)
    out = sh(str(BIN / "domainllm"), "pulled", cwd=project)
    assert "marked up to date" in out
    plan = sh("snakemake", "--profile", "profiles/local", "-n", "all", cwd=project)
    assert "Nothing to be done" in plan, plan[-3000:]
    assert "Data and pipelines are up to date" in sh("dvc", "status", cwd=project)


def test_diff_between_two_git_revisions(project, tmp_path):
    """`domainllm diff REV:VERSION REV:VERSION` reads both sides as committed, through DVC.

    Two commits differ in generate.max_new_tokens; the workspace holds the second, so
    the first side can only come from DVC's cache at its revision.
    """
    import polars as pl

    git = ("git", "-c", "user.email=t@t", "-c", "user.name=t")
    cfg_path = project / "config/config.yaml"

    def commit(message: str) -> str:
        sh("dvc", "repro", cwd=project)
        sh(*git, "add", "-A", cwd=project)
        sh(*git, "commit", "-qm", message, cwd=project)
        return sh("git", "rev-parse", "HEAD", cwd=project).strip()

    first = commit("evaluated")
    versions = project / "results/eval/versions"
    first_sft = json.loads((versions / "sft.json").read_text())
    first_items = pl.read_parquet(versions / "sft.items.parquet")
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["generate"]["max_new_tokens"] = 2 if cfg["generate"]["max_new_tokens"] != 2 else 3
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    second = commit("shorter answers")

    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    out = tmp_path / "diff"
    args = [str(BIN / "domainllm"), "diff", f"{first}:sft", f"{second}:sft", "--out", str(out)]
    proc = subprocess.run(args, cwd=project, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.with_suffix(".json").read_text())
    rows = {r["metric"]: r for r in result["metrics"]}
    tokens = rows["output_tokens_mean"]
    assert tokens["a"] == first_sft["metrics"]["output_tokens_mean"]  # the first commit's
    assert tokens["b"] <= cfg["generate"]["max_new_tokens"] < tokens["a"]
    # Same model at both revisions: JCommonsenseQA identical item by item.
    jcqa = rows["jcqa_acc"]
    assert jcqa["delta"] == 0 and jcqa["n"] > 0 and jcqa["ci_low"] == jcqa["ci_high"] == 0
    assert rows["chrf_sentence_mean"]["n"] > 0  # paired over the answers
    # The examples: the answers whose evaluator score changed between the commits (the
    # tiny model may answer blanks at both lengths: then none), with both answers.
    score = pl.col("metric") == "evaluator_score"
    changed = (
        first_items.filter(score)
        .join(pl.read_parquet(versions / "sft.items.parquet").filter(score), on="item_id")
        .with_columns((pl.col("value_right") - pl.col("value")).abs().alias("change"))
        .filter(pl.col("change") > 0)
        .sort(["change", "item_id"], descending=[True, False])
        .head(5)
    )
    assert [e["item_id"] for e in result["examples"]] == changed["item_id"].to_list()
    assert [(e["output_a"], e["output_b"]) for e in result["examples"]] == list(
        zip(changed["output"].to_list(), changed["output_right"].to_list(), strict=True)
    )
    # The models and the data, read at each revision.
    ia, ib = result["a"]["info"], result["b"]["info"]
    assert ia["parameters"] == ib["parameters"] > 0 and ia["size_on_disk_mb"] > 0
    assert ia["quantisation"] == "none (full precision)"
    da, db = result["data"]["a"], result["data"]["b"]
    assert da == db and da["selection threshold"] > 0
    assert any(
        k.startswith("shards (") and k.endswith("): tokens") and v > 0 for k, v in da.items()
    )
    md = out.with_suffix(".md").read_text()
    assert f"A = {first}:sft ({first})" in md and "## Data" in md

    # The quantised version at the first commit: another scheme, fewer bytes.
    both = [str(BIN / "domainllm"), "diff", f"{first}:sft", f"{first}:sft-gptq"]
    proc = subprocess.run(
        [*both, "--out", str(out)], cwd=project, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["b"]["info"]["quantisation"].startswith("W4A16")
    assert result["b"]["info"]["weights_mb"] < result["a"]["info"]["weights_mb"]
    # An unknown revision: a clear error, exit 1.
    proc = subprocess.run(
        [*args[:2], "nosuchrev:sft", "sft"], cwd=project, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 1 and "nosuchrev" in proc.stderr
