"""Base candidates as config entries: local folders, hub ids and built models, chosen
automatically or by override, through the package and through the workflow's plan.

No test needs the network: hub ids are only validated and planned, and a build of
one in offline mode fails cleanly without a connection attempt.
"""

from __future__ import annotations

import copy
import json
import re
import socket
from pathlib import Path

import polars as pl
import pytest
import yaml

from domainllm.config import validate_config
from domainllm.errors import ConfigError, DataError
from domainllm.models.build import build_base
from domainllm.models.loading import looks_local
from domainllm.models.score import score_base
from domainllm.models.select import select_base
from tests.conftest import REPO, make_workdir, snakemake
from tests.unit._tiny_lm import build_model, chabsa_documents

TEST_CONFIG = yaml.safe_load((REPO / "config" / "test.yaml").read_text(encoding="utf-8"))
TASKS = [
    str(REPO / "config" / "tasks" / f) for f in ("jcommonsenseqa.yaml", "chabsa_sentiment.yaml")
]
HUB_ID = "rinna/japanese-gpt-neox-small"


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def config_with(candidates: list[dict], **base) -> dict:
    cfg = copy.deepcopy(TEST_CONFIG)
    cfg["base"]["candidates"] = candidates
    cfg["base"].update(base)
    return cfg


def test_a_candidate_needs_exactly_one_of_build_and_source(no_network):
    build = TEST_CONFIG["base"]["candidates"][0]["build"]
    ok = validate_config(config_with([{"name": "hub", "source": HUB_ID}]))
    # trust_remote_code and allow_pickle are off unless the entry turns them on.
    assert ok["base"]["candidates"][0]["trust_remote_code"] is False
    assert ok["base"]["candidates"][0]["allow_pickle"] is False
    on = validate_config(config_with([{"name": "x", "source": HUB_ID, "trust_remote_code": True}]))
    assert on["base"]["candidates"][0]["trust_remote_code"] is True
    for bad in (
        {"name": "both", "source": HUB_ID, "build": build},
        {"name": "neither"},
    ):
        with pytest.raises(ConfigError, match=r"base\.candidates\[0\]"):
            validate_config(config_with([bad]))


def test_hub_ids_and_local_paths_are_told_apart_without_the_network(tmp_path, no_network):
    assert not looks_local(HUB_ID) and not looks_local("gpt2")
    assert looks_local(str(tmp_path)) and looks_local("./models/x") and looks_local("a/b/c")
    (tmp_path / "org").mkdir()
    assert looks_local("org") is False  # not here: the cwd is elsewhere


def test_a_hub_id_fails_offline_without_a_connection(tmp_path, no_network, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "hub"
    with pytest.raises(DataError, match=f"{HUB_ID}: cannot load the model"):
        build_base(str(out), corpus=None, spec=None, source=HUB_ID)
    assert not out.exists()


def test_a_local_model_folder_goes_through_build_score_and_select(tmp_path, monkeypatch):
    """A candidate given as a path to a save_pretrained folder is copied, scored on every
    metric and ranked against a second local candidate."""
    import torch

    torch.set_num_threads(1)
    monkeypatch.chdir(REPO)
    heldout = tmp_path / "heldout.parquet"
    reports = chabsa_documents(36)
    pl.DataFrame(
        {
            "id": [d["header"]["document_id"] for d in reports],
            "source": "chabsa",
            "text": ["\n".join(s["sentence"] for s in d["sentences"]) for d in reports],
        }
    ).write_parquet(heldout)
    # "trained" has seen the domain text; "random" has not.
    sources = {
        "trained": build_model(tmp_path / "src" / "trained", vocab_size=500, train_steps=40),
        "random": build_model(tmp_path / "src" / "random", vocab_size=500, seed=1),
    }
    scores = []
    for name, src in sources.items():
        out = tmp_path / "base" / name
        build_base(str(out), corpus=None, spec=None, source=str(src))
        assert json.loads((out / "build.json").read_text())["source"] == str(src)
        score_file = tmp_path / "scores" / f"{name}.json"
        s = score_base(
            str(out),
            str(score_file),
            domain_texts=str(heldout),
            corpus=str(heldout),
            tasks=TASKS,
            max_items=8,
            ppl_seq_len=64,
            ppl_stride=32,
        )
        assert s["candidate"] == name and s["jcqa_n"] == s["chabsa_sentiment_n"] == 8
        scores.append(str(score_file))
    sel = tmp_path / "selection"
    weights = {"domain_bits_per_char": 1.0}
    chosen = select_base(
        scores,
        str(sel / "table.parquet"),
        str(sel / "table.md"),
        str(sel / "chosen.json"),
        weights=weights,
    )
    assert chosen["name"] == "trained" and chosen["path"] == str(tmp_path / "base" / "trained")
    assert chosen["override"] is False
    # base.choose: <name> overrides the ranking.
    forced = select_base(
        scores,
        str(sel / "table.parquet"),
        str(sel / "table.md"),
        str(sel / "chosen.json"),
        weights=weights,
        choose="random",
    )
    assert forced["name"] == "random" and forced["best_ranked"] == "trained"
    assert forced["override"] is True
    assert json.loads((sel / "chosen.json").read_text()) == forced


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return make_workdir(tmp_path_factory.mktemp("candidates"))


def plan(workdir: Path, cfg: dict, *targets: str, check: bool = True):
    path = workdir / f"cfg-{len(list(workdir.glob('cfg-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    # Targets before --configfile, which takes several values.
    return snakemake(
        "-n", "--cores", "1", *targets, "--configfile", str(path), cwd=workdir, check=check
    )


def test_workflow_plans_local_and_hub_candidates_without_the_network(tmp_path, workdir):
    """Parsing and planning never fetch a hub id (HF_HUB_OFFLINE is set for the run, and
    hub ids are no inputs); a local folder is an input of its build_base job."""
    local = build_model(tmp_path / "local-model", vocab_size=300)
    cfg = config_with(
        [{"name": "local", "source": str(local)}, {"name": "hub", "source": HUB_ID}],
        choose="auto",
    )
    cfg["paths"]["allow_outside"] = True  # the local model lies outside the work directory
    out = plan(workdir, cfg, "selection").stdout
    for wildcard in ("candidate=local", "candidate=hub"):
        assert wildcard in out
    assert re.search(rf"input: {re.escape(str(local))}\b", out), out
    assert "results/corpus/clean.parquet" not in out.split("rule build_base")[1].split("output")[0]
    # With base.choose: auto, what follows the checkpoint is planned after it runs.
    assert "write_shards" not in plan(workdir, cfg).stdout


def test_override_plans_training_on_the_named_candidate(workdir):
    out = plan(workdir, config_with(TEST_CONFIG["base"]["candidates"], choose="tiny-en")).stdout
    # No checkpoint to wait for: the shards of the named candidate are planned now.
    assert re.search(r"results/shards/tiny-en\b", out), out
    assert "results/shards/tiny-ja" not in out


def test_workflow_refuses_bad_task_files_and_weights_while_parsing(tmp_path, workdir):
    bad = tmp_path / "bad_task.yaml"
    bad.write_text("name: x\npath: data.jsonl\nprompt: '{q}'\nchoices: {words: [a, b]}\n")
    cfg = config_with(TEST_CONFIG["base"]["candidates"])
    cfg["base"]["selection"]["tasks"] = [str(bad)]
    cfg["base"]["selection"]["weights"] = {"chars_per_token": 1.0}
    cfg["paths"]["allow_outside"] = True  # the task file lies outside the work directory
    proc = plan(workdir, cfg, check=False)
    assert proc.returncode != 0
    assert re.search(
        rf"(?s){re.escape(str(bad))}: invalid task file:.*'label' is a required",
        proc.stdout + proc.stderr,
    )
    cfg = config_with(TEST_CONFIG["base"]["candidates"])
    cfg["base"]["selection"]["weights"] = {"jsts_acc": 1.0}
    proc = plan(workdir, cfg, check=False)
    assert proc.returncode != 0
    assert "base.selection.weights': unknown metric(s) jsts_acc" in proc.stdout + proc.stderr
