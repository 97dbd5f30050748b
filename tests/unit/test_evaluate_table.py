"""Tests of domainllm.evaluate.table: evaluators' scores of answers and the table with intervals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from domainllm.errors import DataError
from domainllm.evaluate.feedback import register_evaluator, split_dialogue
from domainllm.evaluate.metrics import length_stats, sentence_chrf
from domainllm.evaluate.table import bootstrap_interval, eval_table, score_answers
from domainllm.evaluate.version import items_frame
from domainllm.io import read_json, write_json
from tests.unit._tiny_lm import elyza_items

N_BOOT, SEED = 300, 5


@register_evaluator("test-table-length")
class LengthEvaluator:
    """P(good) grows with the answer's length; an empty answer gets no verdict when abstaining."""

    def __init__(self, abstains: bool):
        self.abstains = abstains

    @classmethod
    def load(cls, folder):
        return cls(read_json(Path(folder) / "evaluator.json")["abstains"])

    def score(self, texts):
        answers = [split_dialogue(t)[1] for t in texts]
        return np.array(
            [np.nan if self.abstains and not a else len(a) / (len(a) + 50.0) for a in answers]
        )


def _evaluator(path: Path, abstains: bool) -> str:
    path.mkdir(parents=True)
    write_json({"kind": "test-table-length", "abstains": abstains}, path / "evaluator.json")
    return str(path)


def _version(root: Path, version: str, outputs: list[str], jcqa: list[int]) -> Path:
    """A version record, its per-item scores and its generations, consistent with each other."""
    items = elyza_items(len(outputs))
    refs = [x["output"] for x in items]
    chrfs = sentence_chrf(outputs, refs)
    judged = [len(o) / (len(o) + 80.0) for o in outputs]
    metrics = {
        "jcqa_acc": float(np.mean(jcqa)),
        "chrf": 12.5,  # corpus-level: no per-item values
        "chrf_sentence_mean": float(np.mean(chrfs)),
        "evaluator_score": float(np.mean(judged)),
        "domain_bits_per_char": 3.0 + len(version) / 10,
        **length_stats(outputs),
    }
    rec = root / "versions" / f"{version}.json"
    write_json({"version": version, "model": f"models/{version}", "metrics": metrics}, rec)
    rows = [("jcqa", str(i), "jcqa_correct", float(c), None) for i, c in enumerate(jcqa)]
    for i, (o, c, j) in enumerate(zip(outputs, chrfs, judged, strict=True)):
        rows += [("generation", f"elyza/{i}", "chrf", c, o)]
        rows += [("generation", f"elyza/{i}", "evaluator_score", j, o)]
    items_frame(rows).write_parquet(rec.with_name(f"{version}.items.parquet"))
    gens = root / "generations" / f"{version}.parquet"
    gens.parent.mkdir(exist_ok=True)
    pl.DataFrame(
        {
            "id": [f"elyza/{i}" for i in range(len(outputs))],
            "prompt": [x["input"] for x in items],
            "reference": refs,
            "output": outputs,
        }
    ).write_parquet(gens)
    return rec


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("table")
    items = elyza_items(12)
    rng = np.random.default_rng(0)
    base_out = [x["output"][:5] for x in items]
    base_out[3] = ""  # an empty generation
    sft_out = [x["output"][:40] for x in items]
    recs = [
        _version(root, "base", base_out, list(rng.integers(0, 2, 25))),
        _version(root, "sft", sft_out, list(rng.integers(0, 2, 25))),
    ]
    length = _evaluator(root / "ev" / "length", abstains=False)
    judge = _evaluator(root / "ev" / "judgelike", abstains=True)
    summaries, scores = [], []
    for ev, versions in ((length, ["base", "sft"]), (judge, ["base"])):
        for v in versions:
            out = root / "scores" / Path(ev).name / f"{v}.parquet"
            summaries.append(
                score_answers(ev, str(root / "generations" / f"{v}.parquet"), str(out))
            )
            scores.append(str(out))
    outs = {
        k: root / "eval" / name
        for k, name in [
            ("table", "table.parquet"),
            ("md", "table.md"),
            ("html", "table.html"),
            ("metrics", "metrics.json"),
            ("plot", "metrics_by_version.png"),
            ("dist", "score_distributions.png"),
        ]
    }
    eval_table(
        [str(r) for r in recs],
        str(outs["table"]),
        str(outs["md"]),
        str(outs["metrics"]),
        table_html=str(outs["html"]),
        scores=scores,
        plot_metrics_png=str(outs["plot"]),
        plot_scores_png=str(outs["dist"]),
        n_boot=N_BOOT,
        seed=SEED,
    )
    return root, recs, summaries, scores, outs


def test_score_answers_writes_one_row_per_answer_and_counts_empty_ones(run):
    root, _, summaries, scores, _ = run
    s = {(x["evaluator"], x["version"]): x for x in summaries}
    assert (
        s[("length", "base")]["empty_answers"] == 1 and s[("length", "sft")]["empty_answers"] == 0
    )
    assert s[("length", "base")]["no_verdict"] == 0
    assert s[("judgelike", "base")]["no_verdict"] == 1  # the empty answer: no verdict, not 0.5
    df = pl.read_parquet(root / "scores" / "judgelike" / "base.parquet")
    assert df.height == 12 and df["score"].null_count() == 1 and df["empty"].sum() == 1
    assert df.filter(pl.col("empty"))["score"][0] is None
    assert set(df["abstains"]) == {True} and set(df["version"]) == {"base"}


def test_every_metric_with_items_has_a_bootstrap_interval(run):
    root, recs, _, _, outs = run
    df = pl.read_parquet(outs["table"])
    assert df["version"].to_list() == ["base", "sft"]
    items = pl.read_parquet(recs[0].with_name("base.items.parquet"))
    correct = items.filter(pl.col("metric") == "jcqa_correct")["value"].to_numpy()
    row = df.row(0, named=True)
    # The interval is the seeded percentile bootstrap of the items' mean.
    assert (row["jcqa_acc_ci_low"], row["jcqa_acc_ci_high"]) == bootstrap_interval(
        correct, "mean", N_BOOT, SEED
    )
    for m in (
        "jcqa_acc",
        "chrf_sentence_mean",
        "evaluator_score",
        "output_chars_mean",
        "output_chars_median",
        "empty_output_rate",
        "repetition_rate",
        "length_score",
    ):
        for r in df.iter_rows(named=True):
            assert r[f"{m}_ci_low"] <= r[m] + 1e-12 and r[m] <= r[f"{m}_ci_high"] + 1e-12, m
    # Corpus-level metrics have no per-item values and no interval.
    assert (
        df["chrf_ci_low"].null_count() == 2 and df["domain_bits_per_char_ci_low"].null_count() == 2
    )
    # Every interval given holds its point estimate (corpus BLEU has none: its
    # per-item values are sentence BLEU, another statistic).
    for c in df.columns:
        if c.endswith("_ci_low"):
            m = c[: -len("_ci_low")]
            for r in df.iter_rows(named=True):
                if r[c] is not None and r[m] is not None:
                    assert r[c] <= r[m] + 1e-12 <= r[f"{m}_ci_high"] + 2e-12, m
    if "bleu_ci_low" in df.columns:
        assert df["bleu_ci_low"].null_count() == df.height
    assert (
        row["empty_output_rate"] == pytest.approx(1 / 12) and row["empty_output_rate_ci_high"] > 0
    )


def test_evaluators_scores_become_columns_only_for_the_versions_they_score(run):
    _, _, _, _, outs = run
    df = pl.read_parquet(outs["table"])
    base, sft = df.row(0, named=True), df.row(1, named=True)
    assert base["judgelike_no_verdict_rate"] == pytest.approx(1 / 12)
    assert sft["judgelike_score"] is None and sft["judgelike_no_verdict_rate"] is None
    assert sft["length_score"] > base["length_score"]
    metrics = json.loads(outs["metrics"].read_text())
    assert "judgelike_score" in metrics["base"] and "judgelike_score" not in metrics["sft"]
    # An evaluator that never abstains gets no no-verdict column.
    assert "length_score" in df.columns and "length_no_verdict_rate" not in df.columns


def test_metrics_json_keeps_the_version_metric_keys(run):
    _, recs, _, _, outs = run
    metrics = json.loads(outs["metrics"].read_text())
    assert list(metrics) == ["base", "sft"]
    for rec in recs:
        r = json.loads(rec.read_text())
        for m, v in r["metrics"].items():
            assert metrics[r["version"]][m] == pytest.approx(v)
    assert not any(k.endswith(("_ci_low", "_ci_high")) for m in metrics.values() for k in m)


def test_markdown_html_and_plots(run):
    _, _, _, _, outs = run
    md = outs["md"].read_text()
    header = md.splitlines()[2]
    assert "jcqa_acc ↑" in header and "domain_bits_per_char ↓" in header
    assert "judgelike_no_verdict_rate ↓" in header and "output_chars_mean |" in header
    sft_line = next(line for line in md.splitlines() if line.startswith("| sft |"))
    assert "[" in sft_line and "| – |" in sft_line  # intervals; the judge did not score sft
    assert "No interval" in md and "chrf, domain_bits_per_char" in md
    page = outs["html"].read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("<tr>") == 3
    assert "<th>sft</th>" in page and "class=best" in page
    for png in (outs["plot"], outs["dist"]):
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_intervals_are_seeded_and_median_aware():
    x = np.arange(20, dtype=float)
    assert bootstrap_interval(x, "mean", 500, 1) == bootstrap_interval(x, "mean", 500, 1)
    lo, hi = bootstrap_interval(x, "median", 500, 1)
    # Medians of resampled integers are whole or halves: the median, not the mean, was taken.
    assert lo <= np.median(x) <= hi and (2 * lo).is_integer() and (2 * hi).is_integer()
    assert all(math.isnan(v) for v in bootstrap_interval(np.array([]), "mean", 10, 1))


# ---------------------------------------------------------------- bad input


def test_a_version_lacking_a_metric_is_refused_naming_the_file(run, tmp_path):
    _, recs, _, _, _ = run
    rec = json.loads(recs[1].read_text())
    del rec["metrics"]["jcqa_acc"]
    bad = tmp_path / "sft.json"
    bad.write_text(json.dumps(rec))
    out = tmp_path / "t"
    with pytest.raises(DataError, match=r"sft.json: version 'sft' lacks metric\(s\) jcqa_acc"):
        eval_table(
            [str(recs[0]), str(bad)], str(out / "a.parquet"), str(out / "a.md"), str(out / "m.json")
        )
    assert not out.exists()


def test_scores_of_an_unknown_version_or_twice_are_refused(run, tmp_path):
    _, recs, _, scores, _ = run
    out = tmp_path / "t"
    args = (str(out / "a.parquet"), str(out / "a.md"), str(out / "m.json"))
    with pytest.raises(DataError, match="version 'sft' is not in the table"):
        eval_table([str(recs[0])], *args, scores=[s for s in scores if s.endswith("sft.parquet")])
    with pytest.raises(DataError, match="scores version 'base' twice"):
        eval_table([str(r) for r in recs], *args, scores=[scores[0], scores[0]])
    assert not out.exists()


def test_scoring_answers_needs_the_generation_columns(tmp_path):
    gens = tmp_path / "g.parquet"
    pl.DataFrame({"id": ["a"], "output": ["x"]}).write_parquet(gens)
    ev = _evaluator(tmp_path / "ev", abstains=False)
    with pytest.raises(DataError, match=r"g.parquet: missing column\(s\) prompt"):
        score_answers(ev, str(gens), str(tmp_path / "s.parquet"))
    assert not (tmp_path / "s.parquet").exists()
