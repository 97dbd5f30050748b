"""Tests of feedback pairs (domainllm.data.feedback) and the evaluator (evaluate.feedback)."""

from __future__ import annotations

import gzip
import json

import numpy as np
import polars as pl
import pytest

from domainllm.data.feedback import _quotas, prepare_feedback
from domainllm.errors import ConfigError, DataError
from domainllm.evaluate.feedback import (
    ANSWER_FEATURES,
    TEXT_FEATURES,
    WordNgrams,
    check_evaluator_specs,
    expected_calibration_error,
    format_dialogue,
    load_evaluator,
    paired_accuracy,
    split_dialogue,
    text_features,
    train_evaluator,
    wakati,
)
from tests.unit._tiny_lm import SAMPLES

HH = [
    str(SAMPLES / "hh_rlhf" / "helpful-base_test.jsonl.gz"),
    str(SAMPLES / "hh_rlhf" / "harmless-base_test.jsonl.gz"),
]


@pytest.fixture(scope="module")
def all_pairs(tmp_path_factory):
    """Every sample pair (about 4,660): 1,166 held out, enough to see a weak signal."""
    root = tmp_path_factory.mktemp("fb")
    stats = prepare_feedback(
        HH,
        str(root / "train.parquet"),
        str(root / "test.parquet"),
        max_pairs=10_000,
        test_fraction=0.25,
        seed=1234,
    )
    return root, stats


@pytest.fixture(scope="module")
def trained(all_pairs):
    root, _ = all_pairs
    metrics = train_evaluator(
        str(root / "train.parquet"),
        str(root / "test.parquet"),
        str(root / "ev"),
        num_boost_round=200,
        seed=1234,
    )
    return root, metrics


def test_prepare_takes_pairs_evenly_and_keeps_pairs_together(tmp_path):
    tr, te = tmp_path / "tr.parquet", tmp_path / "te.parquet"
    stats = prepare_feedback(HH, str(tr), str(te), max_pairs=400, test_fraction=0.25, seed=1)
    assert [f["taken"] for f in stats["files"].values()] == [200, 200]
    train, test = pl.read_parquet(tr), pl.read_parquet(te)
    assert train.columns == ["pair_id", "text", "label"] == test.columns
    assert train.height == 600 and test.height == 200
    assert not set(train["pair_id"]) & set(test["pair_id"])
    for df in (train, test):
        per_pair = df.group_by("pair_id").agg(pl.col("label").sort())
        assert all(labels == [0, 1] for labels in per_pair["label"].to_list())
    # Texts come from the files (chosen has label 1).
    with gzip.open(HH[0], "rt") as f:
        chosen = {json.loads(line)["chosen"].strip() for line in f}
    good = set(train.filter(pl.col("label") == 1)["text"]) | set(
        test.filter(pl.col("label") == 1)["text"]
    )
    assert len(good & chosen) > 150
    # Same seed, same split; another seed, another one.
    tr2, te2 = tmp_path / "tr2.parquet", tmp_path / "te2.parquet"
    prepare_feedback(HH, str(tr2), str(te2), max_pairs=400, test_fraction=0.25, seed=1)
    assert pl.read_parquet(tr2).equals(train)
    prepare_feedback(HH, str(tr2), str(te2), max_pairs=400, test_fraction=0.25, seed=2)
    assert not pl.read_parquet(te2).equals(test)


def test_quotas_fill_from_larger_files():
    assert _quotas([3, 100], 50) == [3, 47]
    assert _quotas([10, 10, 10], 7) == [3, 2, 2] or sum(_quotas([10, 10, 10], 7)) == 7
    assert _quotas([5, 5], 100) == [5, 5]


def test_prepare_names_bad_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"chosen": "a", "rejected": "b"}\n{"chosen": "a"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: .*rejected"):
        prepare_feedback(
            [str(bad)], str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet"), max_pairs=10
        )
    assert not (tmp_path / "a.parquet").exists()


def test_evaluator_beats_chance_on_held_out_pairs(trained, all_pairs):
    _, metrics = trained
    _, stats = all_pairs
    test = metrics["test"]
    assert stats["test_pairs"] == test["n_pairs"] > 1000
    # HH-RLHF preferences are hard for surface features: chosen and rejected share the
    # dialogue, and length helps in helpful-base but hurts in harmless-base. With word
    # n-grams and word overlaps this split (the pipeline's default seed) gives about 0.55.
    assert test["auc"] - test["auc_se"] > 0.5
    assert test["paired_accuracy"] > 0.5
    assert 0 <= test["ece"] < 0.1
    assert metrics["train"]["auc"] > test["auc"]


def test_evaluator_learns_a_clear_preference(tmp_path):
    """The same machinery separates real answers from degenerate ones (what weak LLMs emit)."""
    rng = np.random.default_rng(0)
    rows = []
    with gzip.open(HH[0], "rt") as f:
        for pid, line in enumerate(f):
            if pid == 800:
                break
            good = json.loads(line)["chosen"].strip()
            ctx, ans = split_dialogue(good)
            cut = max(1, int(rng.integers(3, 8)))
            bad = ctx + "\n\nAssistant: " + (ans[:cut] + " ") * int(rng.integers(5, 15))
            rows += [(pid, good, 1), (pid, bad, 0)]
    df = pl.DataFrame(rows, schema=["pair_id", "text", "label"], orient="row")
    tr, te = tmp_path / "tr.parquet", tmp_path / "te.parquet"
    df.filter(pl.col("pair_id") < 600).write_parquet(tr)
    df.filter(pl.col("pair_id") >= 600).write_parquet(te)
    m = train_evaluator(str(tr), str(te), str(tmp_path / "ev"), num_boost_round=50, seed=1)
    assert m["test"]["auc"] > 0.95 and m["test"]["paired_accuracy"] > 0.95


def test_evaluator_folder_is_pickle_free_and_reloads(trained):
    root, metrics = trained
    folder = root / "ev"
    names = sorted(p.name for p in folder.iterdir())
    assert names == [
        "evaluator.json", "metrics.json", "model.txt", "model_card.md", "test_scores.parquet",
        "tfidf.json",
    ]  # fmt: skip
    assert json.loads((folder / "metrics.json").read_text()) == metrics
    assert metrics["features"] == "word" and "fugashi" in metrics["tokenizer"]
    card = (folder / "model_card.md").read_text()
    assert "HH-RLHF" in card and f"{metrics['test']['auc']:.4f}" in card
    assert "word 1-2-grams" in card and "## Limits" in card
    held = pl.read_parquet(folder / "test_scores.parquet")
    assert held.columns == ["pair_id", "label", "score"]
    ev = load_evaluator(folder)
    test = pl.read_parquet(root / "test.parquet")
    scores = ev.score(test["text"].to_list())
    assert scores.shape == (test.height,) and ((scores >= 0) & (scores <= 1)).all()
    assert paired_accuracy(
        test["pair_id"].to_numpy(), test["label"].to_numpy(), scores
    ) == pytest.approx(metrics["test"]["paired_accuracy"])
    # Japanese answers (what the pipeline scores) get valid probabilities too.
    ja = ev.score([format_dialogue("売上高は？", "1. 増加\n2. 減少"), "こんにちは", ""])
    assert ja.shape == (3,) and np.isfinite(ja).all()


def test_training_is_deterministic(tmp_path):
    tr, te = tmp_path / "tr.parquet", tmp_path / "te.parquet"
    prepare_feedback(HH, str(tr), str(te), max_pairs=300, seed=3)
    train_evaluator(str(tr), str(te), str(tmp_path / "a"), num_boost_round=30, seed=3)
    train_evaluator(str(tr), str(te), str(tmp_path / "b"), num_boost_round=30, seed=3)
    assert (tmp_path / "a" / "model.txt").read_text() == (tmp_path / "b" / "model.txt").read_text()
    assert (tmp_path / "a" / "tfidf.json").read_text() == (
        tmp_path / "b" / "tfidf.json"
    ).read_text()


def test_train_rejects_shared_pairs(all_pairs, tmp_path):
    root, _ = all_pairs
    with pytest.raises(DataError, match="share pair_id"):
        train_evaluator(
            str(root / "train.parquet"), str(root / "train.parquet"), str(tmp_path / "x")
        )
    assert not (tmp_path / "x").exists()


def test_split_dialogue_and_features():
    ctx, ans = split_dialogue(
        "\n\nHuman: What is 2+2?\n\nAssistant: It is 4.\n\nHuman: Sure?\n\nAssistant: Yes!"
    )
    assert ans == "Yes!" and ctx.endswith("Human: Sure?")
    assert split_dialogue("plain answer") == ("", "plain answer")
    ctx, ans = split_dialogue("<s>### ユーザー:\n質問\n### アシスタント:\n答え")
    assert ans == "答え"
    items, questions = ANSWER_FEATURES.index("list_items"), ANSWER_FEATURES.index("question_marks")
    f_list = text_features("- a\n- b\n- c?")
    f_plain = text_features("abc")
    assert f_list[items] == 3 and f_plain[items] == 0
    assert f_list[questions] == 1
    paragraphs = ANSWER_FEATURES.index("paragraphs")
    assert text_features("一段落目。\n\n二段落目。\n\u3000\n三。")[paragraphs] == 3
    loop = ANSWER_FEATURES.index("repeated_word_ratio")
    assert text_features("また、" * 20)[loop] > 0.9 > text_features("売上高は増加した。")[loop]


def test_calibration_and_paired_accuracy_by_hand():
    y = np.array([1, 0, 1, 0])
    assert expected_calibration_error(y, np.array([1.0, 0.0, 1.0, 0.0])) == 0
    assert expected_calibration_error(y, np.full(4, 0.5)) == 0  # right on average
    assert expected_calibration_error(np.array([1, 1]), np.array([0.25, 0.25])) == pytest.approx(
        0.75
    )
    pairs = np.array([0, 0, 1, 1, 2, 2])
    labels = np.array([1, 0, 1, 0, 0, 1])
    assert paired_accuracy(
        pairs, labels, np.array([0.9, 0.1, 0.2, 0.8, 0.5, 0.5])
    ) == pytest.approx(0.5)


def test_format_dialogue_strips_like_the_training_texts():
    """A generation's leading blank lines must not look like another turn (issue 6 fix)."""
    with gzip.open(HH[0], "rt") as f:
        stripped = next(
            t for t in (json.loads(line)["chosen"].strip() for line in f) if t.count("Human:") == 1
        )
    context, answer = split_dialogue(stripped)
    prompt = context.removeprefix("Human: ")
    assert format_dialogue(prompt, answer) == stripped
    assert format_dialogue(f" {prompt}\n", f"\n\n{answer}\n") == stripped
    turns = TEXT_FEATURES.index("context_turns")
    feats = text_features(format_dialogue(prompt, "\n\n" + answer))
    assert feats == text_features(stripped) and feats[turns] == 1
    assert format_dialogue("質問", "") == "Human: 質問\n\nAssistant:"


def test_word_counts_match_scikit_learn():
    from sklearn.feature_extraction.text import CountVectorizer

    docs = [
        wakati(t.lower()) for t in ["今日は良い天気です。今日は", "It is a good day, a day.", ""]
    ]
    analyzer = WordNgrams((1, 2))
    cv = CountVectorizer(analyzer=analyzer).fit(docs)
    ours = analyzer.count_matrix(docs, cv.vocabulary_)
    assert (ours != cv.transform(docs)).nnz == 0 and ours.sum() > 10


def test_char_features_and_stacking(all_pairs, tmp_path):
    """Character n-grams instead of words; a second LightGBM stacked on the first's scores."""
    root, _ = all_pairs
    tr, te = str(root / "train.parquet"), str(root / "test.parquet")
    base = tmp_path / "evaluators" / "char"
    m = train_evaluator(tr, te, str(base), features="char", num_boost_round=30, seed=1)
    assert m["features"] == "char" and m["test"]["auc"] > 0.5
    assert "character 3-5-grams" in (base / "model_card.md").read_text()
    top = tmp_path / "evaluators" / "stacked"
    ms = train_evaluator(tr, te, str(top), stack=[str(base)], num_boost_round=30, seed=1)
    assert ms["stack"] == ["char"]
    meta = json.loads((top / "evaluator.json").read_text())
    assert "stack_char" in meta["features"] and meta["stack"] == [
        {"name": "char", "path": "../char"}
    ]
    # The evaluators folder moves as a whole: the stacked one finds its base relatively.
    moved = tmp_path / "moved"
    (tmp_path / "evaluators").rename(moved)
    ev = load_evaluator(moved / "stacked")
    test = pl.read_parquet(te)
    held = pl.read_parquet(moved / "stacked" / "test_scores.parquet")
    assert np.allclose(ev.score(test["text"].to_list()), held["score"].to_numpy())


def test_feedback_without_both_labels_is_refused(tmp_path):
    good = tmp_path / "good.parquet"
    pl.DataFrame({"pair_id": [0, 1], "text": ["a", "b"], "label": [1, 1]}).write_parquet(good)
    with pytest.raises(DataError, match="needs both labels"):
        train_evaluator(str(good), str(good), str(tmp_path / "x"))
    unl = tmp_path / "unlabelled.parquet"
    pl.DataFrame(
        {"pair_id": [0, 0], "text": ["a", "b"], "label": [1, None]},
        schema_overrides={"label": pl.Int64},
    ).write_parquet(unl)
    with pytest.raises(DataError, match="unlabelled.parquet: row 1 has no label"):
        train_evaluator(str(unl), str(good), str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()


def test_evaluator_specs_are_checked():
    specs = check_evaluator_specs(
        [{"name": "lgbm", "type": "lightgbm"}, {"name": "bert", "type": "bert", "epochs": 2}]
    )
    assert specs[0]["features"] == "word" and specs[0]["stack"] == []
    assert specs[1]["epochs"] == 2 and specs[1]["model"] is None and specs[1]["max_len"] == 256
    bad = [
        ([], "list at least one"),
        ([{"name": "a", "type": "judge"}], r"evaluators\[0\].type': unknown evaluator type"),
        ([{"name": "a", "type": "lightgbm", "epochs": 1}], r"\[0\].epochs': not an option"),
        ([{"name": "a", "type": "lightgbm"}] * 2, r"\[1\].name': 'a' is listed twice"),
        ([{"name": "a b", "type": "bert"}], r"\[0\].name"),
        ([{"name": "a", "type": "lightgbm", "stack": ["b"]}, {"name": "b", "type": "bert"}],
         r"\[0\].stack': 'b' is not an evaluator listed before"),
    ]  # fmt: skip
    for specs, message in bad:
        with pytest.raises(ConfigError, match=message):
            check_evaluator_specs(specs)
