"""filter_sft: empty, feedback-label, duplicate and low-score drops, with stats and samples."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from domainllm.data.instructions import prepare_instructions
from domainllm.errors import DataError, PipelineError
from domainllm.train.filter import evaluator_text, filter_sft
from tests.unit._tiny_lm import ELYZA, PRODUCT_LOG, SAMPLES, SELF_INSTRUCT

SOURCES = [
    {"name": "self_instruct", "format": "self_instruct", "path": str(SELF_INSTRUCT)},
    {"name": "product_log", "format": "product_log", "path": str(PRODUCT_LOG)},
]


@pytest.fixture(scope="module")
def candidates(tmp_path_factory) -> Path:
    """Real candidates (ELYZA, Self-Instruct, product log) plus empty and duplicated examples."""
    d = tmp_path_factory.mktemp("cand")
    prepare_instructions(
        str(ELYZA), str(d / "c.parquet"), str(d / "e.parquet"), sources=SOURCES, elyza_eval=30,
        seed=1,
    )  # fmt: skip
    df = pl.read_parquet(d / "c.parquet")
    first = df.row(0, named=True)
    extra = pl.DataFrame(
        {
            "id": ["x/empty", "x/blank", "x/dup", "x/dup-nfkc"],
            "source": ["x"] * 4,
            "instruction": ["Say hi.", "  ", first["instruction"] + "  ", "ＡＢＣ  は？"],
            "output": ["", "answer", first["output"].replace("\n", " \n "), "１２３"],
            "feedback": [None, None, None, None],
            "timestamp": [None, None, None, None],
        },
        schema=df.schema,
    )
    # The NFKC-equal original of x/dup-nfkc comes first, so the full-width copy is the duplicate.
    orig = pl.DataFrame(
        {"id": ["x/abc"], "source": ["x"], "instruction": ["ABC は？"], "output": ["123"],
         "feedback": [None], "timestamp": [None]},
        schema=df.schema,
    )  # fmt: skip
    path = d / "candidates.parquet"
    pl.concat([df, orig, extra]).write_parquet(path)
    return path


@pytest.fixture
def length_scorer(monkeypatch):
    """A stand-in scorer (longer answer -> better) to test the cuts independently of the model."""
    from domainllm.evaluate import feedback

    seen = []

    class Scorer:
        def score(self, texts):
            seen.extend(texts)
            return np.array([min(len(t.split("Assistant: ", 1)[1]) / 1000, 1.0) for t in texts])

    monkeypatch.setattr(feedback, "load_evaluator", lambda path: Scorer())
    return seen


def run(tmp_path, candidates, **kw):
    out, stats = tmp_path / "sft.parquet", tmp_path / "sft_filter.json"
    kw = {"drop_quantile": 0.25, **kw}
    res = filter_sft(str(candidates), str(tmp_path / "no-evaluator"), str(out), str(stats), **kw)
    assert json.loads(stats.read_text()) == res
    return res, pl.read_parquet(out), tmp_path / "sft_dropped_samples.jsonl"


def test_every_drop_has_its_reason_counted_per_source(tmp_path, candidates, length_scorer):
    res, kept, samples_path = run(tmp_path, candidates)
    cand = pl.read_parquet(candidates)
    n_in, n_bad = cand.height, int((cand["feedback"] == "bad").sum())
    assert res["n_in"] == n_in and res["n_kept"] == kept.height
    assert res["dropped"]["empty"] == 2
    assert res["dropped"]["feedback_bad"] == n_bad == 100
    assert res["dropped"]["duplicate"] == 2
    assert n_in - sum(res["dropped"].values()) == kept.height
    # Every non-empty example is scored, bad-labelled ones included (they measure the scorer).
    assert len(length_scorer) == n_in - 2
    for src, s in res["per_source"].items():
        assert s["n_in"] == int((cand["source"] == src).sum())
        assert s["n_in"] - sum(s["dropped"].values()) == s["n_kept"]
        assert s["n_kept"] == int((kept["source"] == src).sum())
        # The quantile cut is per source, over what the earlier reasons left there.
        left = cand.filter(
            (pl.col("source") == src)
            & (pl.col("feedback").fill_null("none") != "bad")
            & ~pl.col("id").is_in(["x/empty", "x/blank", "x/dup", "x/dup-nfkc"])
        )
        scores = np.array([min(len(o.strip()) / 1000, 1.0) for o in left["output"]])
        assert s["threshold"] == pytest.approx(np.quantile(scores, 0.25))
        assert s["dropped"]["low_quality"] == int((scores < s["threshold"]).sum())
        assert kept.filter(pl.col("source") == src)["quality"].min() >= s["threshold"]
    assert res["per_source"]["product_log"]["feedback"] == {"good": 100, "bad": 100, "none": 0}
    assert kept.columns == [*cand.columns, "quality"]
    assert not {"x/empty", "x/blank", "x/dup", "x/dup-nfkc"} & set(kept["id"])
    assert "bad" not in kept["feedback"].to_list()
    assert length_scorer[0] == evaluator_text(cand["instruction"][0], cand["output"][0])
    assert length_scorer[0].startswith("Human: ") and "\n\nAssistant: " in length_scorer[0]

    samples = [json.loads(line) for line in samples_path.read_text().splitlines()]
    by_reason = {}
    for s in samples:
        by_reason.setdefault(s["reason"], []).append(s)
    assert {r: len(v) for r, v in by_reason.items()} == {
        "empty": 2, "feedback_bad": 5, "duplicate": 2, "low_quality": 5,
    }  # fmt: skip
    dups = {s["id"]: s["duplicate_of"] for s in by_reason["duplicate"]}
    assert dups == {"x/dup": cand["id"][0], "x/dup-nfkc": "x/abc"}
    for s in by_reason["low_quality"]:
        assert s["quality"] < s["threshold"] == res["per_source"][s["source"]]["threshold"]
    assert all(
        s["feedback"] == "bad" and s["source"] == "product_log" for s in by_reason["feedback_bad"]
    )
    assert res["dropped_samples"] == str(samples_path)
    assert "NFKC" in res["dedup"]
    assert res["scorer"]["heldout"] is None  # the stand-in has no metrics.json


def test_absolute_threshold_and_feedback_choices(tmp_path, candidates, length_scorer):
    res, kept, _ = run(tmp_path / "a", candidates, drop_quantile=0.0, min_score=0.2)
    assert kept["quality"].min() >= 0.2
    assert all(t == 0.2 for t in res["thresholds"]["per_source"].values())
    scores = np.array([min(len(o.strip()) / 1000, 1.0) for o in kept["output"]])
    assert np.allclose(kept["quality"].to_numpy(), scores)
    # Keep bad feedback, drop everything without feedback: only the product log is left.
    res, kept, _ = run(tmp_path / "b", candidates, drop_quantile=0.0, drop_feedback=["none"])
    assert set(kept["source"]) == {"product_log"} and kept.height == 200
    assert res["dropped"]["feedback_none"] == pl.read_parquet(candidates).height - 200 - 2


def test_bad_inputs_are_refused(tmp_path, candidates, length_scorer):
    bad = tmp_path / "bad.parquet"
    pl.DataFrame({"id": ["a"], "instruction": ["q"]}).write_parquet(bad)
    with pytest.raises(DataError, match="bad.parquet: missing column"):
        run(tmp_path, bad)
    wrong = tmp_path / "wrong.parquet"
    pl.DataFrame(
        {"id": ["a"], "source": ["s"], "instruction": ["q"], "output": ["a"], "feedback": ["meh"]}
    ).write_parquet(wrong)
    with pytest.raises(DataError, match="row id a has 'meh'"):
        run(tmp_path, wrong)
    with pytest.raises(PipelineError, match="sft.filter.drop_feedback': unknown label"):
        run(tmp_path, candidates, drop_feedback=["awful"])
    with pytest.raises(PipelineError, match="every example was filtered out"):
        run(tmp_path, candidates, drop_feedback=["good", "bad", "none"])
    assert not (tmp_path / "sft.parquet").exists() and not (tmp_path / "sft_filter.json").exists()


def test_with_the_trained_feedback_evaluator(tmp_path, candidates):
    pytest.importorskip("lightgbm")
    from domainllm.data.feedback import prepare_feedback
    from domainllm.evaluate.feedback import train_evaluator

    hh = SAMPLES / "hh_rlhf"
    prepare_feedback(
        [str(hh / "helpful-base_test.jsonl.gz"), str(hh / "harmless-base_test.jsonl.gz")],
        str(tmp_path / "ftr.parquet"), str(tmp_path / "fte.parquet"),
        # 1,000 pairs: with fewer, word-feature evaluators rank the product log at chance.
        max_pairs=1000, test_fraction=0.25, seed=0,
    )  # fmt: skip
    metrics = train_evaluator(
        str(tmp_path / "ftr.parquet"), str(tmp_path / "fte.parquet"), str(tmp_path / "ev"),
        num_boost_round=30, seed=0, num_threads=1,
    )  # fmt: skip
    res = filter_sft(
        str(candidates), str(tmp_path / "ev"), str(tmp_path / "sft.parquet"),
        str(tmp_path / "sft.json"), drop_quantile=0.1,
    )  # fmt: skip
    kept = pl.read_parquet(tmp_path / "sft.parquet")
    assert res["dropped"]["low_quality"] >= 3 and res["n_kept"] == kept.height
    assert kept["quality"].is_between(0.0, 1.0).all()
    heldout = res["scorer"]["heldout"]
    assert heldout["auc"] == metrics["test"]["auc"] and heldout["n_pairs"] == 250
    # The product log's own labels: 100 prompts, each with a good and a bad answer.
    fb = res["scorer"]["feedback_labels"]
    assert fb["n_texts"] == 200 and fb["n_pairs"] == 100
    assert 0.5 < fb["auc"] < 1.0 and 0.0 <= fb["paired_accuracy"] <= 1.0


def test_dedup_key_is_nfkc_and_whitespace():
    from domainllm.train.filter import normalize

    assert normalize("  ＡＢＣ\u3000 は？\n\n") == "ABC は?"
    assert normalize("Case") != normalize("case")
    assert unicodedata.normalize("NFKC", "１２３") == normalize("１２３") == "123"
