"""The whole DAG on config/test.yaml in a fresh folder, checked by content."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest
import yaml

from tests.conftest import make_workdir, snakemake

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    work = make_workdir(tmp_path_factory.mktemp("e2e"))
    snakemake("--cores", "2", "--configfile", "config/test.yaml", cwd=work, timeout=3000)
    return work


def test_selected_documents_are_ranked_by_similarity(run):
    selected = pl.read_parquet(run / "results/corpus/selected.parquet")
    clean = pl.read_parquet(run / "results/corpus/clean.parquet")
    assert 0 < selected.height < clean.height
    scores = selected["score"].to_numpy()
    assert np.all(np.diff(scores) <= 0), "selected documents are not sorted by score"
    assert set(selected["id"]) <= set(clean["id"])


def test_shards_decode_back_to_text(run):
    from transformers import AutoTokenizer

    from domainllm.corpus.shards import load_tokens

    chosen = json.loads((run / "results/selection/chosen.json").read_text())
    shard_dir = run / "results/shards" / chosen["name"]
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    tokens = load_tokens(shard_dir)
    assert len(tokens) == manifest["total_tokens"] > 0
    tok = AutoTokenizer.from_pretrained(run / "results/base" / chosen["name"])
    eos = manifest["eos_id"]
    first_doc = np.asarray(tokens[: int(np.argmax(np.asarray(tokens) == eos))])
    text = tok.decode(first_doc.tolist())
    selected = pl.read_parquet(run / "results/corpus/selected.parquet")
    assert text.strip()[:40] in selected["text"][0] or selected["text"][0][:40] in text


def test_training_loss_fell(run):
    for stage in ("cpt", "sft"):
        m = json.loads((run / f"results/models/tiny-test/{stage}/train_metrics.json").read_text())
        assert m["last_loss"] < m["first_loss"], f"{stage} loss did not fall: {m}"


def test_quantised_model_is_4_bit(run):
    cfg = json.loads((run / "results/models/tiny-test/sft-gptq/config.json").read_text())
    qc = cfg["quantization_config"]
    bits = {g["weights"]["num_bits"] for g in qc["config_groups"].values()}
    assert bits == {4}


def test_selection_table_ranks_every_candidate(run):
    table = pl.read_parquet(run / "results/selection/table.parquet")
    assert sorted(table["candidate"]) == ["tiny-en", "tiny-ja"]
    chosen = json.loads((run / "results/selection/chosen.json").read_text())
    assert chosen["name"] in table["candidate"].to_list()
    assert table.filter(pl.col("chosen"))["candidate"].to_list() == [chosen["name"]]


def test_generations_exist_for_every_version(run):
    for version in ("base", "cpt", "sft", "sft-gptq"):
        gen = pl.read_parquet(run / f"results/generations/{version}.parquet")
        # 8 held-out ELYZA prompts, then 4 JSQuAD questions (config/test.yaml).
        assert gen.height == 8 + 4
        assert gen["id"].str.starts_with("jsquad/").sum() == 4
        assert (gen["output_tokens"] > 0).all()


def test_evaluation_table_has_a_finite_row_per_version(run):
    table = pl.read_parquet(run / "results/eval/table.parquet")
    assert table["version"].to_list() == ["base", "cpt", "sft", "sft-gptq"]
    numeric = [c for c, t in zip(table.columns, table.dtypes, strict=False) if t.is_numeric()]
    assert {"jcqa_acc", "domain_bits_per_char", "jcqa_acc_ci_low", "jcqa_acc_ci_high"} <= set(
        numeric
    )
    # Null: no interval (a corpus-level metric) or not measured (the judge scores sft only).
    for col in numeric:
        assert all(math.isfinite(v) for v in table[col].to_list() if v is not None), col
    assert table["jcqa_acc"].null_count() == 0 and table["jcqa_acc_ci_low"].null_count() == 0
    generic = ("bleu", "rouge_l", "jsquad_exact_match", "jsquad_f1")
    assert all(table[m].null_count() == 0 for m in generic)
    # Every interval holds its point estimate (corpus BLEU once got the interval
    # of sentence BLEU: another statistic, and the plot refused it).
    for col in table.columns:
        if col.endswith("_ci_low"):
            m = col[: -len("_ci_low")]
            for r in table.iter_rows(named=True):
                if r[col] is not None and r[m] is not None:
                    assert r[col] - 1e-9 <= r[m] <= r[f"{m}_ci_high"] + 1e-9, (m, r["version"])
    metrics = json.loads((run / "results/eval/metrics.json").read_text())
    assert set(metrics) == {"base", "cpt", "sft", "sft-gptq"}
    assert (
        "judge_no_verdict_rate" in metrics["sft"] and "judge_no_verdict_rate" not in metrics["cpt"]
    )
    for plot in ("metrics_by_version.png", "score_distributions.png"):
        assert (run / "results/eval/plots" / plot).read_bytes()[:4] == b"\x89PNG"


def test_every_evaluator_is_validated_against_people(run):
    report = json.loads((run / "results/eval/evaluator_validation.json").read_text())
    assert set(report["evaluators"]) == {"feedback-lgbm", "feedback-bert", "judge"}
    for name, r in report["evaluators"].items():
        assert r["checks"] and r["fit"] == all(c["passed"] for c in r["checks"]), name
    assert report["evaluators"]["judge"]["pairwise"]["feedback"]["prompts"] == 12
    fitness = json.loads((run / "results/eval/evaluator_fitness.json").read_text())
    assert set(fitness) == set(report["evaluators"])
    md = (run / "results/eval/evaluator_validation.md").read_text()
    assert "fit to drive decisions" in md


def test_a_second_run_has_nothing_to_do(run):
    proc = snakemake("-n", "--cores", "1", "--configfile", "config/test.yaml", cwd=run)
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_report_holds_every_result(run, tmp_path):
    """`snakemake --report` after the run: one HTML file embedding the selection table, the
    corpus histogram, both loss curves, the quantisation table, the evaluation table and
    its plots, each byte for byte, with its caption."""
    from tests.workflow.test_report import read_report

    out = tmp_path / "report.html"
    snakemake("--cores", "1", "--configfile", "config/test.yaml", "--report", str(out), cwd=run)
    results, categories = read_report(out)
    expected = {
        "results/corpus/selection_hist.png": ("1. Corpus", "Domain selection"),
        "results/selection/table.md": ("2. Base selection", "Ranking"),
        "results/models/tiny-test/cpt/loss_curve.png": ("3. Training", "Continued pre-training"),
        "results/models/tiny-test/sft/loss_curve.png": ("3. Training", "Instruction tuning"),
        "results/quantize/tiny-test/quality.md": ("4. Quantisation", "Quality"),
        "results/eval/table.html": ("5. Evaluation", "Table"),
        "results/eval/plots/metrics_by_version.png": ("5. Evaluation", "Plots"),
        "results/eval/plots/score_distributions.png": ("5. Evaluation", "Plots"),
    }
    assert set(results) == set(expected)
    for path, (category, subcategory) in expected.items():
        assert path in categories[category][subcategory], path
        assert results[path]["bytes"] == (run / path).read_bytes(), path
        assert results[path]["caption"].startswith("<p>"), path
    # The tables are readable in the page: the Markdown ones inside their captions.
    chosen = json.loads((run / "results/selection/chosen.json").read_text())["name"]
    assert f"| {chosen} |" in results["results/selection/table.md"]["caption"]
    assert "| gptq |" in results["results/quantize/tiny-test/quality.md"]["caption"]
    assert results["results/eval/table.html"]["mime_type"] == "text/html"
    assert "<td" in results["results/eval/table.html"]["bytes"].decode()
    # Captions are rendered with the run's settings (select_domain's cut, cpt.max_steps).
    assert "quantile" in results["results/corpus/selection_hist.png"]["caption"]
    max_steps = yaml.safe_load((run / "config/test.yaml").read_text())["cpt"]["max_steps"]
    steps = results["results/models/tiny-test/cpt/loss_curve.png"]["caption"]
    assert f"cpt.max_steps</tt> = {max_steps}," in steps


def test_diff_of_two_versions_in_the_table(run, tmp_path):
    """`domainllm diff sft sft-gptq` on the run: every table metric, the real GPTQ folder
    counted as the model it quantises, the corpus and shards as the run wrote them."""
    from domainllm.evaluate.diff import diff

    result, failed = diff("sft", "sft-gptq", results=str(run / "results"), out=str(tmp_path / "d"))
    assert failed == []
    table = pl.read_parquet(run / "results/eval/table.parquet")
    measured = {c for c in table.columns if c not in ("version", "model")}
    measured = {c for c in measured if not c.endswith(("_ci_low", "_ci_high"))}
    sft = table.filter(pl.col("version") == "sft").row(0, named=True)
    rows = {r["metric"]: r for r in result["metrics"]}
    assert {m for m in measured if sft[m] is not None} <= set(rows)
    assert rows["jcqa_acc"]["n"] > 0 and "p_value" in rows["jsquad_f1"]
    ia, ib = result["a"]["info"], result["b"]["info"]
    assert ia["parameters"] == ib["parameters"] > 0
    assert ia["quantisation"].startswith("none") and ib["quantisation"].startswith("W4A16")
    assert ib["weights_mb"] < ia["weights_mb"]
    chosen = json.loads((run / "results/selection/chosen.json").read_text())["name"]
    manifest = json.loads((run / f"results/shards/{chosen}/manifest.json").read_text())
    data = result["data"]["a"]
    tokens = sum(s["total_tokens"] for s in manifest["splits"].values())
    assert data[f"shards ({chosen}): tokens"] == tokens
    selection = json.loads((run / "results/corpus/selection.json").read_text())
    assert data["selection threshold"] == selection["threshold"]
    assert "<h2>Data</h2>" in (tmp_path / "d.html").read_text()
