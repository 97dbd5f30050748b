"""The workflow parses, lints clean, dry-runs, and agrees with dvc.yaml."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.conftest import REPO, make_workdir, snakemake


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return make_workdir(tmp_path_factory.mktemp("dag"))


def test_lint_is_clean():
    proc = snakemake("--lint", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Lints for rule" not in out and "Lints for snakefile" not in out, out


@pytest.mark.parametrize("configfile", ["config/config.yaml", "config/test.yaml"])
def test_dry_run_plans_the_whole_chain(workdir, configfile):
    proc = snakemake("-n", "--cores", "1", "--configfile", configfile, cwd=workdir)
    out = proc.stdout
    # Up to the base-selection checkpoint the plan is concrete; what follows it is
    # planned once the checkpoint has run.
    for rule in (
        "ingest_corpus",
        "clean_corpus",
        "select_domain",
        "build_base",
        "score_base",
        "select_base",
        "prepare_instructions",
        "prepare_feedback",
        "train_evaluator",
    ):
        assert re.search(rf"\b{rule}\b", out), f"{rule} missing from the dry run:\n{out}"


def _dvc_stages():
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _resolve(path: str, config: dict) -> str:
    return path.replace("${paths.results}", config["paths"]["results"]).replace(
        "${model_name}", config["model_name"]
    )


def test_every_dvc_stage_runs_a_snakemake_target():
    proc = snakemake("--list-target-rules")
    targets = set(proc.stdout.split())
    for name, stage in _dvc_stages().items():
        m = re.fullmatch(r"snakemake --profile profiles/local (\w+)", stage["cmd"])
        assert m, f"dvc stage {name}: cmd is not one Snakemake target: {stage['cmd']}"
        assert m.group(1) in targets, f"dvc stage {name} runs unknown target {m.group(1)}"


def test_every_dvc_output_is_produced_by_the_workflow(workdir):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    outs = []
    for stage in _dvc_stages().values():
        for entry in stage.get("outs", []) + stage.get("metrics", []):
            outs.append(_resolve(next(iter(entry)) if isinstance(entry, dict) else entry, config))
    # Folders holding per-candidate or per-tokenizer outputs are checked through one member.
    produced_by_rule = {
        f"{config['paths']['results']}/base": f"{config['paths']['results']}/base/tiny-ja",
        f"{config['paths']['results']}/shards": None,  # after the checkpoint: see the e2e test
        f"{config['paths']['results']}/eval/versions": (
            f"{config['paths']['results']}/eval/versions/sft.json"
        ),
    }
    for out in outs:
        target = produced_by_rule.get(out, out)
        if target is None:
            continue
        proc = snakemake("-n", "--cores", "1", target, cwd=workdir, check=False)
        assert proc.returncode == 0, f"no rule makes dvc output {out}:\n{proc.stderr[-3000:]}"
