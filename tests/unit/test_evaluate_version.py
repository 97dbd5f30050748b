"""Tests of domainllm.evaluate.version: per-version metrics and the evaluation table."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest

from domainllm.data.feedback import prepare_feedback
from domainllm.errors import DataError
from domainllm.evaluate.feedback import train_evaluator
from domainllm.evaluate.table import eval_table
from domainllm.evaluate.version import evaluate_version
from domainllm.infer import generate
from tests.unit._tiny_lm import JCQA, SAMPLES, build_model, sample_texts, write_eval_prompts

METRICS = {
    "jcqa_acc",
    "jcqa_acc_norm",
    "jcqa_acc_bytes",
    "domain_bits_per_char",
    "domain_perplexity",
    "chrf",
    "chrf_sentence_mean",
    "bleu",
    "rouge_l",
    "evaluator_score",
    "output_chars_mean",
    "output_chars_median",
    "output_tokens_mean",
    "empty_output_rate",
    "repetition_rate",
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("version")
    # Two versions: random weights, and the same architecture briefly trained on domain text.
    base = build_model(root / "base", hidden=64, intermediate=128, seed=1)
    cpt = build_model(root / "cpt", hidden=64, intermediate=128, seed=1, train_steps=40)
    prompts = root / "eval_prompts.parquet"
    write_eval_prompts(prompts, 6)
    heldout = root / "domain_heldout.parquet"
    texts = sample_texts(70)[60:70]  # documents the trained version never saw
    pl.DataFrame(
        {"id": [str(i) for i in range(10)], "title": ["t"] * 10, "text": texts}
    ).write_parquet(heldout)
    hh = [str(SAMPLES / "hh_rlhf" / "helpful-base_test.jsonl.gz")]
    prepare_feedback(
        hh, str(root / "fb_tr.parquet"), str(root / "fb_te.parquet"), max_pairs=300, seed=1
    )
    train_evaluator(
        str(root / "fb_tr.parquet"),
        str(root / "fb_te.parquet"),
        str(root / "ev"),
        num_boost_round=30,
    )
    outs = {}
    for name, model in [("base", base), ("cpt", cpt)]:
        gens = root / "generations" / f"{name}.parquet"
        generate(str(model), str(prompts), str(gens), max_new_tokens=16, batch_size=6, seed=1)
        outs[name] = root / "eval" / "versions" / f"{name}.json"
        evaluate_version(
            name,
            str(model),
            str(gens),
            str(heldout),
            str(JCQA),
            str(root / "ev"),
            str(outs[name]),
            jcqa_max_items=20,
            ppl_seq_len=64,
            items_output=str(outs[name].with_suffix(".items.parquet")),
        )
    return root, outs


def test_version_json_has_all_metrics(setup):
    _, outs = setup
    rec = json.loads(outs["cpt"].read_text())
    assert rec["version"] == "cpt" and rec["model"].endswith("cpt")
    assert set(rec["metrics"]) == METRICS
    assert all(math.isfinite(v) for v in rec["metrics"].values())
    m = rec["metrics"]
    assert 0 <= m["jcqa_acc"] <= 1 and 0 <= m["jcqa_acc_norm"] <= 1
    assert 0 <= m["evaluator_score"] <= 1 and 0 <= m["chrf"] <= 100
    assert 1 <= m["output_tokens_mean"] <= 16
    assert rec["info"]["jcqa_items"] == 20 and rec["info"]["generations"] == 6


def test_per_item_scores_aggregate_to_the_version_metrics(setup):
    _, outs = setup
    rec = json.loads(outs["cpt"].read_text())["metrics"]
    items = pl.read_parquet(outs["cpt"].with_suffix(".items.parquet"))
    mean = dict(items.group_by("metric").agg(pl.col("value").mean()).iter_rows())
    count = dict(items.group_by("metric").len().iter_rows())
    assert count["jcqa_correct"] == 20 and count["chrf"] == 6 and count["evaluator_score"] == 6
    assert mean["jcqa_correct"] == pytest.approx(rec["jcqa_acc"])
    assert mean["jcqa_correct_norm"] == pytest.approx(rec["jcqa_acc_norm"])
    assert mean["chrf"] == pytest.approx(rec["chrf_sentence_mean"])
    assert mean["evaluator_score"] == pytest.approx(rec["evaluator_score"])
    gens = items.filter(pl.col("task") == "generation")
    assert gens["output"].null_count() == 0


def test_training_on_domain_text_lowers_domain_bits_per_char(setup):
    _, outs = setup
    base = json.loads(outs["base"].read_text())["metrics"]
    cpt = json.loads(outs["cpt"].read_text())["metrics"]
    assert cpt["domain_bits_per_char"] < base["domain_bits_per_char"]
    assert cpt["domain_perplexity"] < base["domain_perplexity"]


def test_eval_table_one_row_per_version(setup):
    root, outs = setup
    table, md, mj = (
        root / "eval" / "table.parquet",
        root / "eval" / "table.md",
        root / "eval" / "metrics.json",
    )
    metrics = eval_table([str(outs["base"]), str(outs["cpt"])], str(table), str(md), str(mj))
    df = pl.read_parquet(table)
    assert df["version"].to_list() == ["base", "cpt"]
    intervals = {f"{m}_ci_{end}" for m in METRICS for end in ("low", "high")}
    assert set(df.columns) == {"version", "model"} | METRICS | intervals
    assert all(df[m].is_finite().all() for m in METRICS)
    on_disk = json.loads(mj.read_text())
    assert on_disk == metrics and set(on_disk) == {"base", "cpt"}
    assert on_disk["cpt"]["chrf"] == df.filter(pl.col("version") == "cpt")["chrf"][0]
    text = md.read_text()
    assert "| base |" in text and "| cpt |" in text and "domain_bits_per_char ↓" in text


def test_eval_table_rejects_incomplete_or_non_finite(setup, tmp_path):
    _, outs = setup
    rec = json.loads(outs["cpt"].read_text())
    partial = dict(
        rec, version="sft", metrics={k: v for k, v in rec["metrics"].items() if k != "chrf"}
    )
    (tmp_path / "sft.json").write_text(json.dumps(partial))
    out = [str(tmp_path / n) for n in ("t.parquet", "t.md", "m.json")]
    with pytest.raises(DataError, match="sft.json.*lacks metric.*chrf"):
        eval_table([str(outs["base"]), str(tmp_path / "sft.json")], *out)
    nan = dict(rec, version="sft", metrics=dict(rec["metrics"], chrf=float("nan")))
    (tmp_path / "sft.json").write_text(json.dumps(nan))
    with pytest.raises(DataError, match="chrf not finite"):
        eval_table([str(outs["base"]), str(tmp_path / "sft.json")], *out)
    assert not any((tmp_path / n).exists() for n in ("t.parquet", "t.md", "m.json"))


def test_evaluate_version_rejects_bad_generations(setup, tmp_path):
    root, _ = setup
    bad = tmp_path / "g.parquet"
    pl.DataFrame({"id": ["a"], "prompt": ["p"]}).write_parquet(bad)
    out = tmp_path / "v.json"
    with pytest.raises(DataError, match="missing column"):
        evaluate_version(
            "sft",
            str(root / "cpt"),
            str(bad),
            str(root / "domain_heldout.parquet"),
            str(JCQA),
            str(root / "ev"),
            str(out),
        )
    assert not out.exists()


def test_diff_compares_two_versions_with_paired_statistics(setup, tmp_path):
    from domainllm.cli import main
    from domainllm.evaluate.diff import diff, paired_bootstrap

    root, _ = setup  # a run folder: eval/versions/<version>.json and .items.parquet
    result, failed = diff(
        "base", "cpt", results=str(root), out=str(tmp_path / "d"), fail_on=["jcqa_acc:1"]
    )
    assert failed == []
    rows = {r["metric"]: r for r in result["metrics"]}
    bpc = rows["domain_bits_per_char"]
    assert bpc["delta"] == pytest.approx(bpc["b"] - bpc["a"]) and bpc["delta"] < 0
    acc = rows["jcqa_acc"]
    assert acc["n"] == 20 and acc["ci_low"] <= acc["delta"] <= acc["ci_high"]
    assert 0 < acc["p_value"] <= 1
    assert len(result["examples"]) == 5
    assert result["a"]["info"]["parameters"] > 0
    for ext in ("md", "html", "json"):
        assert (tmp_path / f"d.{ext}").stat().st_size > 0
    assert "base vs cpt" in (tmp_path / "d.md").read_text()

    # The CLI gates on a regression: cpt has fewer bits per char than base, so base -> cpt
    # passes and cpt -> base (a regression) exits 3.
    ok = main(
        ["diff", "base", "cpt", "--results", str(root), "--fail-on", "domain_bits_per_char:0"]
    )
    bad = main(
        ["diff", "cpt", "base", "--results", str(root), "--fail-on", "domain_bits_per_char:0"]
    )
    assert (ok, bad) == (0, 3)

    # The bootstrap finds a clear shift and no shift where there is none.
    a = np.zeros(50)
    assert paired_bootstrap(a, a + 1)["p_value"] < 0.01
    same = paired_bootstrap(a, np.tile([1.0, -1.0], 25))
    assert same["ci_low"] < 0 < same["ci_high"] and same["p_value"] > 0.5
