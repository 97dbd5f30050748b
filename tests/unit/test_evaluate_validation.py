"""Tests of domainllm.evaluate.validation: evaluators checked against people."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from domainllm.corpus.embedding_check import read_sts_pairs
from domainllm.data.feedback import prepare_feedback
from domainllm.errors import DataError
from domainllm.evaluate.feedback import read_feedback, register_evaluator, split_dialogue
from domainllm.evaluate.table import bootstrap_interval
from domainllm.evaluate.validation import (
    reference_pairs,
    spearman,
    validate_evaluators,
)
from domainllm.io import read_json, write_json
from tests.unit._tiny_lm import SAMPLES, elyza_items

JSTS = SAMPLES / "jglue" / "jsts-v1.3_valid-v1.3.json"
LENIENT = {
    "min_auc": 0.0,
    "min_paired_accuracy": 0.0,
    "max_ece": 1.0,
    "min_coverage": 0.0,
    "max_position_flip_rate": 1.0,
}


def _length_score(text: str) -> float:
    _, answer = split_dialogue(text)
    return len(answer) / (len(answer) + 200.0)


@register_evaluator("test-length")
class LengthEvaluator:
    """P(good) grows with the answer's length; every ``nan_every``-th text gets no score."""

    def __init__(self, nan_every: int | None = None):
        self.nan_every = nan_every
        self.abstains = bool(nan_every)

    @classmethod
    def load(cls, folder):
        return cls(read_json(Path(folder) / "evaluator.json").get("nan_every"))

    def score(self, texts):
        s = np.array([_length_score(t) for t in texts])
        if self.nan_every:
            s[:: self.nan_every] = np.nan
        return s


def _length_folder(path: Path, nan_every: int | None = None) -> str:
    path.mkdir(parents=True, exist_ok=True)
    write_json({"kind": "test-length", "nan_every": nan_every}, path / "evaluator.json")
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("validation")
    hh = [str(SAMPLES / "hh_rlhf" / "helpful-base_test.jsonl.gz")]
    prepare_feedback(
        hh, str(root / "fb_tr.parquet"), str(root / "fb_te.parquet"), max_pairs=160, seed=1
    )
    items = elyza_items(10)
    gens = {}
    # "short": every answer is the reference's first 15 characters.
    gens["short"] = {
        "id": [f"elyza/{i}" for i in range(10)],
        "prompt": [x["input"] for x in items],
        "reference": [x["output"] for x in items],
        "output": [x["output"][:15] for x in items],
    }
    # "broken": three empty answers and one item without a reference.
    broken = {k: list(v) for k, v in gens["short"].items()}
    broken["output"][:3] = ["", None, "   "]
    broken["reference"][4] = None
    gens["broken"] = broken
    paths = []
    for name, cols in gens.items():
        path = root / "generations" / f"{name}.parquet"
        path.parent.mkdir(exist_ok=True)
        pl.DataFrame(cols, schema={k: pl.String for k in cols}).write_parquet(path)
        paths.append(str(path))
    return root, paths


def _run(root, folders, gens, name="v", **kw):
    kw = {"thresholds": LENIENT, "n_boot": 200, "seed": 7, **kw}
    md, js, flat = root / f"{name}.md", root / f"{name}.json", root / f"{name}.summary.json"
    report = validate_evaluators(
        folders, str(root / "fb_te.parquet"), gens, str(md), str(js), summary_json=str(flat), **kw
    )
    # The summary for `dvc metrics diff`: flat numbers, the report's headline values.
    for ev, row in json.loads(flat.read_text()).items():
        r = report["evaluators"][ev]
        assert row["fit"] == int(r["fit"])
        assert row["auc"] == pytest.approx(r["feedback"]["auc"], nan_ok=True) or row["auc"] is None
        assert all(isinstance(v, int | float) or v is None for v in row.values())
    return report, md.read_text(), json.loads(js.read_text())


def test_held_out_metrics_match_a_direct_computation(data, tmp_path):
    from sklearn.metrics import roc_auc_score

    root, gens = data
    folder = _length_folder(tmp_path / "length")
    _, md, js = _run(root, [folder], gens)
    r = js["evaluators"]["length"]
    fb = read_feedback(str(root / "fb_te.parquet"))
    scores = np.array([_length_score(t) for t in fb["text"]])
    assert r["feedback"]["auc"] == pytest.approx(roc_auc_score(fb["label"], scores))
    labels = fb["label"].to_numpy()
    assert r["feedback"]["accuracy"] == pytest.approx(np.mean((scores >= 0.5) == labels))
    # Paired check: the chosen text's score above the rejected one's, ties half.
    by = {}
    for pid, y, s in zip(fb["pair_id"], fb["label"], scores, strict=True):
        by.setdefault(pid, {})[y] = s
    wins = [1.0 if d[1] > d[0] else 0.5 if d[1] == d[0] else 0.0 for d in by.values()]
    paired = r["feedback"]["paired"]
    assert paired["paired_accuracy"] == pytest.approx(np.mean(wins))
    assert paired["pairs"] == len(by) == fb["pair_id"].n_unique()
    assert paired["ci_low"] <= paired["paired_accuracy"] <= paired["ci_high"]
    assert r["feedback"]["auc_ci_low"] <= r["feedback"]["auc"] <= r["feedback"]["auc_ci_high"]
    assert r["feedback"]["coverage"] == 1.0
    # The reference (longer than a 15-character cut) is preferred in every pair it has.
    assert r["reference"]["by_version"]["short"]["paired_accuracy"] == 1.0
    assert "| length | test-length | **yes** |" in md


def test_intervals_are_seeded(data, tmp_path):
    root, gens = data
    folder = _length_folder(tmp_path / "length")
    a = _run(root, [folder], gens, name="a")[2]["evaluators"]["length"]["feedback"]["paired"]
    b = _run(root, [folder], gens, name="b")[2]["evaluators"]["length"]["feedback"]["paired"]
    c = _run(root, [folder], gens, name="c", seed=8)[2]["evaluators"]["length"]["feedback"]
    assert (a["ci_low"], a["ci_high"]) == (b["ci_low"], b["ci_high"])
    assert (a["ci_low"], a["ci_high"]) != (c["paired"]["ci_low"], c["paired"]["ci_high"])
    rng = np.random.default_rng(0)
    x = rng.random(50)
    lo, hi = bootstrap_interval(x, "mean", 2000, 3)
    assert lo < x.mean() < hi and hi - lo == pytest.approx(2 * 1.96 * x.std() / math.sqrt(50), 0.2)


def test_fitness_follows_the_configured_thresholds(data, tmp_path):
    root, gens = data
    folder = _length_folder(tmp_path / "length")
    strict = {**LENIENT, "min_auc": 0.99}
    report, md, js = _run(root, [folder], gens, thresholds=strict)
    r = js["evaluators"]["length"]
    assert r["fit"] is False
    failed = [c["check"] for c in r["checks"] if not c["passed"]]
    assert failed == ["held-out AUC"]
    assert "**Not fit to drive decisions**: held-out AUC" in md
    assert js["thresholds"]["min_auc"] == 0.99


def test_missing_references_and_empty_answers_are_counted(data):
    _, gens = data
    pairs, counts = reference_pairs(gens)
    assert counts["broken"] == {
        "items": 10,
        "other_task": 0,
        "missing_reference": 1,
        "empty_output": 3,
        "pairs": 9,
    }
    assert counts["short"]["pairs"] == 10 and counts["short"]["missing_reference"] == 0
    broken = [p for p in pairs if p["version"] == "broken"]
    assert [p["output"] for p in broken[:3]] == ["", "", "   "]
    assert "elyza/4" not in {p["item_id"] for p in broken}


def test_only_free_form_tasks_give_reference_pairs(tmp_path):
    path = tmp_path / "mixed.parquet"
    pl.DataFrame(
        {
            "id": ["elyza/1", "jsquad/a1", "x"],
            "prompt": ["p", "q", "r"],
            "reference": ["human answer", "span", "ref"],
            "output": ["o", "o", "o"],
            "task": [None, None, "elyza"],
        },
        schema={k: pl.String for k in ("id", "prompt", "reference", "output", "task")},
    ).write_parquet(path)
    pairs, counts = reference_pairs([str(path)])
    assert [p["item_id"] for p in pairs] == ["elyza/1", "x"] and counts["mixed"]["other_task"] == 1
    assert len(reference_pairs([str(path)], tasks=None)[0]) == 3


def test_an_evaluator_without_a_verdict_is_counted_and_fails_coverage(data, tmp_path):
    root, gens = data
    folder = _length_folder(tmp_path / "abstains", nan_every=2)
    _, md, js = _run(root, [folder], gens, thresholds={**LENIENT, "min_coverage": 0.9})
    fb = js["evaluators"]["abstains"]["feedback"]
    assert fb["coverage"] == pytest.approx(0.5) and fb["texts_scored"] == fb["texts"] // 2
    coverage = next(c for c in js["evaluators"]["abstains"]["checks"] if "coverage" in c["check"])
    assert coverage["passed"] is False
    assert "coverage (held-out texts scored) 0.500 (needs >= 0.9)" in md


def test_trained_evaluator_and_judge_are_validated_the_same_way(data, tmp_path):
    import torch

    from domainllm.evaluate.feedback import train_evaluator
    from domainllm.evaluate.judge import prepare_judge
    from tests.unit._tiny_lm import ROOT, build_model, sample_texts

    torch.set_num_threads(1)
    root, gens = data
    lgbm = tmp_path / "lgbm"
    train_evaluator(
        str(root / "fb_tr.parquet"), str(root / "fb_te.parquet"), str(lgbm), num_boost_round=20
    )
    model = build_model(
        tmp_path / "m",
        texts=sample_texts(10) + ["Yes No yes no はい いいえ"] * 30,
        vocab_size=600,
        hidden=32,
        intermediate=64,
    )
    judge = tmp_path / "judge"
    modes = ("pointwise", "pairwise", "similarity")
    templates = {m: str(ROOT / "config" / "judge" / f"{m}_ja.yaml") for m in modes}
    prepare_judge(str(judge), model=str(model), templates=templates, top_logprobs=10**6)
    _, md, js = _run(
        root,
        [str(lgbm), str(judge)],
        gens,
        graded=str(JSTS),
        graded_max_pairs=12,
        judge_max_pairs=4,
    )
    assert set(js["evaluators"]) == {"lgbm", "judge"}
    lg, jd = js["evaluators"]["lgbm"], js["evaluators"]["judge"]
    assert lg["feedback"]["texts"] == read_feedback(str(root / "fb_te.parquet")).height
    assert 0 <= lg["feedback"]["auc"] <= 1 and "pairwise" not in lg and "graded" not in lg
    # The judge: a subset, both orders, position bias, the graded check.
    assert jd["kind"] == "judge" and jd["feedback"]["paired"]["pairs"] == 4
    pw = jd["pairwise"]["feedback"]
    assert pw["prompts"] == 8 and 0 <= pw["flip_rate"] <= 1
    assert {"mean_p_when_first", "mean_p_when_second"} <= set(pw)
    assert jd["reference"]["pairs"] == 4 and jd["pairwise"]["reference"]["pairs"] == 4
    assert jd["graded"]["pairs"] == 12 and -1 <= jd["graded"]["spearman"] <= 1
    assert {c["check"] for c in jd["checks"]} >= {"position flip rate", "pairwise coverage"}
    assert "no graded quality scores" in md and "Spearman" in md


def test_sentence_chrf_agrees_with_jsts_human_similarity():
    from domainllm.evaluate.metrics import sentence_chrf

    s1, s2, y = read_sts_pairs(str(JSTS), 100)
    r = spearman(np.asarray(sentence_chrf(s1, s2)), y, 200, 1)
    assert r["spearman"] > 0.4 and r["ci_low"] > 0.2 and r["pairs_scored"] == 100


# ---------------------------------------------------------------- bad input


def _feedback_file(tmp_path, labels) -> str:
    path = tmp_path / "fb.parquet"
    n = len(labels)
    pl.DataFrame(
        {"pair_id": [i // 2 for i in range(n)], "text": ["t"] * n, "label": labels},
        schema={"pair_id": pl.Int64, "text": pl.String, "label": pl.Int64},
    ).write_parquet(path)
    return str(path)


def test_unlabelled_feedback_is_refused_naming_the_file_and_row(tmp_path):
    path = _feedback_file(tmp_path, [1, 0, None, 0])
    with pytest.raises(DataError, match=r"fb.parquet: row 2 has no label .*1 of 4 rows unlabelled"):
        read_feedback(path)


def test_single_class_feedback_is_refused_naming_the_file(tmp_path):
    path = _feedback_file(tmp_path, [1, 1, 1, 1])
    with pytest.raises(DataError, match=r"fb.parquet: every text has label 1"):
        read_feedback(path)


def test_feedback_without_labels_is_refused(tmp_path, data):
    _, gens = data
    path = tmp_path / "nolabel.parquet"
    pl.DataFrame({"pair_id": [0, 0], "text": ["a", "b"]}).write_parquet(path)
    with pytest.raises(DataError, match=r"nolabel.parquet: missing column\(s\) label"):
        validate_evaluators(
            [_length_folder(tmp_path / "l")],
            str(path),
            gens,
            str(tmp_path / "o.md"),
            str(tmp_path / "o.json"),
        )
    assert not (tmp_path / "o.md").exists() and not (tmp_path / "o.json").exists()


def test_a_graded_line_without_a_score_names_file_and_line(tmp_path):
    path = tmp_path / "jsts.json"
    path.write_text(
        '{"sentence1": "a", "sentence2": "b", "label": 1.0}\n{"sentence1": "a", "sentence2": "c"}\n'
    )
    with pytest.raises(DataError, match=r"jsts.json:2: 'label' is not a number"):
        read_sts_pairs(str(path), None)
