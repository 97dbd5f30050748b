"""filter_sft: empty/duplicate removal and the evaluator's low-quality cut."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from domainllm.errors import DataError
from domainllm.train.filter import evaluator_text, filter_sft
from tests.unit._tiny_lm import SAMPLES, prepare_sample_instructions


@pytest.fixture(scope="module")
def candidates(tmp_path_factory) -> Path:
    """Real candidates plus an empty and a duplicated example."""
    d = tmp_path_factory.mktemp("cand")
    prepare_sample_instructions(d / "c.parquet", d / "e.parquet", seed=1)
    df = pl.read_parquet(d / "c.parquet")
    extra = pl.DataFrame(
        {
            "id": ["x/empty", "x/blank", "x/dup"],
            "source": ["x", "x", "x"],
            "instruction": ["Say hi.", "  ", df["instruction"][0] + "  "],
            "output": ["", "answer", df["output"][0]],
        }
    )
    path = d / "candidates.parquet"
    pl.concat([df, extra]).write_parquet(path)
    return path


@pytest.fixture
def length_evaluator(monkeypatch):
    """A stand-in scorer (longer answer -> better) to test the cut independently of the model."""
    mod = types.ModuleType("domainllm.evaluate.feedback")
    seen = []

    class Ev:
        def score(self, texts):
            seen.extend(texts)
            return np.array([min(len(t.split("Assistant: ", 1)[1]) / 1000, 1.0) for t in texts])

    mod.load_evaluator = lambda path: Ev()
    monkeypatch.setitem(sys.modules, "domainllm.evaluate.feedback", mod)
    return seen


def test_drops_empty_duplicate_and_low_quality(tmp_path, candidates, length_evaluator):
    out, stats = tmp_path / "sft.parquet", tmp_path / "sft_filter.json"
    res = filter_sft(str(candidates), "unused", str(out), str(stats), drop_quantile=0.25)
    n_in = pl.read_parquet(candidates).height
    kept = pl.read_parquet(out)
    assert json.loads(stats.read_text()) == res
    assert res["n_in"] == n_in and res["n_kept"] == kept.height
    assert res["dropped"]["empty"] == 2 and res["dropped"]["duplicate"] == 1
    scored = n_in - 3
    assert len(length_evaluator) == scored
    assert res["dropped"]["low_quality"] == pytest.approx(0.25 * scored, abs=3)
    assert n_in - sum(res["dropped"].values()) == kept.height
    assert kept.columns == ["id", "source", "instruction", "output", "quality"]
    assert kept["quality"].min() >= res["threshold"]
    assert not {"x/empty", "x/blank", "x/dup"} & set(kept["id"])
    assert length_evaluator[0] == evaluator_text(kept["instruction"][0], kept["output"][0])


def test_drop_quantile_zero_keeps_every_scored_example(tmp_path, candidates, length_evaluator):
    res = filter_sft(
        str(candidates),
        "unused",
        str(tmp_path / "s.parquet"),
        str(tmp_path / "s.json"),
        drop_quantile=0.0,
    )
    assert res["dropped"]["low_quality"] == 0
    assert res["n_kept"] == res["n_in"] - 3


def test_missing_columns_are_reported(tmp_path, length_evaluator):
    bad = tmp_path / "bad.parquet"
    pl.DataFrame({"id": ["a"], "instruction": ["q"]}).write_parquet(bad)
    with pytest.raises(DataError, match="bad.parquet: missing column"):
        filter_sft(
            str(bad),
            "unused",
            str(tmp_path / "o.parquet"),
            str(tmp_path / "o.json"),
            drop_quantile=0.1,
        )
    assert not (tmp_path / "o.parquet").exists()


def test_with_the_trained_feedback_evaluator(tmp_path, candidates):
    feedback = pytest.importorskip("domainllm.evaluate.feedback")
    data = pytest.importorskip("domainllm.data.feedback")
    pytest.importorskip("lightgbm")
    if not hasattr(feedback, "train_evaluator") or not hasattr(data, "prepare_feedback"):
        pytest.skip("the evaluator engineer's train_evaluator/prepare_feedback are not written yet")
    hh = SAMPLES / "hh_rlhf"
    data.prepare_feedback(
        [str(hh / "helpful-base_test.jsonl.gz")],
        str(tmp_path / "ftr.parquet"),
        str(tmp_path / "fte.parquet"),
        max_pairs=200,
        test_fraction=0.25,
        seed=0,
    )
    feedback.train_evaluator(
        str(tmp_path / "ftr.parquet"),
        str(tmp_path / "fte.parquet"),
        str(tmp_path / "ev"),
        num_boost_round=20,
        seed=0,
        num_threads=1,
    )
    res = filter_sft(
        str(candidates),
        str(tmp_path / "ev"),
        str(tmp_path / "sft.parquet"),
        str(tmp_path / "sft.json"),
        drop_quantile=0.1,
    )
    kept = pl.read_parquet(tmp_path / "sft.parquet")
    assert res["dropped"]["low_quality"] >= 1 and res["n_kept"] == kept.height
    assert kept["quality"].is_between(0.0, 1.0).all()
    assert kept["quality"].min() >= res["threshold"]
