"""evaluate_version's generic metrics: ELYZA answers (chrF, BLEU, ROUGE-L, evaluator) and
JSQuAD answers (exact match, F1) from one generations file, and stripped answers."""

from __future__ import annotations

import polars as pl
import pytest

from domainllm.data.feedback import prepare_feedback
from domainllm.data.instructions import prepare_instructions
from domainllm.errors import DataError
from domainllm.evaluate.feedback import load_evaluator, train_evaluator
from domainllm.evaluate.metrics import bleu, chrf, rouge_l
from domainllm.evaluate.version import evaluate_version
from tests.unit._tiny_lm import ELYZA, JCQA, SAMPLES, build_model, sample_texts

JSQUAD = SAMPLES / "jglue" / "jsquad-v1.3_valid-v1.3.json"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("vm")
    model = build_model(root / "model", hidden=32, intermediate=64, seed=1)
    prompts = root / "eval_prompts.parquet"
    prepare_instructions(
        str(ELYZA), str(root / "cand.parquet"), str(prompts),
        elyza_eval=4, seed=1, jsquad=str(JSQUAD), jsquad_items=4,
    )  # fmt: skip
    heldout = root / "heldout.parquet"
    pl.DataFrame({"text": sample_texts(3)}).write_parquet(heldout)
    hh = [str(SAMPLES / "hh_rlhf" / "helpful-base_test.jsonl.gz")]
    prepare_feedback(hh, str(root / "ftr.parquet"), str(root / "fte.parquet"), max_pairs=300)
    train_evaluator(
        str(root / "ftr.parquet"), str(root / "fte.parquet"), str(root / "ev"),
        num_boost_round=20,
    )  # fmt: skip
    return root, model, prompts


def _generations(root, prompts, name: str, outputs: list[str]):
    df = pl.read_parquet(prompts)
    path = root / f"{name}.parquet"
    df.select("id", "prompt", "reference").with_columns(
        pl.Series("output", outputs), pl.Series("output_tokens", [5] * df.height)
    ).write_parquet(path)
    return path


def _evaluate(root, model, prompts, gens, name):
    out = root / f"{name}.json"
    items = root / f"{name}.items.parquet"
    rec = evaluate_version(
        name, str(model), str(gens), str(root / "heldout.parquet"), str(JCQA),
        str(root / "ev"), str(out), jcqa_max_items=4, ppl_seq_len=32,
        items_output=str(items), prompts=str(prompts),
    )  # fmt: skip
    return rec, pl.read_parquet(items)


def test_elyza_and_jsquad_metrics_from_one_generations_file(setup):
    root, model, prompts = setup
    df = pl.read_parquet(prompts)
    refs = df["reference"].to_list()
    # ELYZA: two exact references, two other answers; JSQuAD: two right spans (one with
    # a second line of chatter, as models add), two wrong.
    outputs = refs[:2] + ["全く関係のない答え", ""]
    outputs += [refs[4] + "\n\nです。", refs[5], "わかりません", "東京"]
    gens = _generations(root, prompts, "mixed", outputs)
    rec, items = _evaluate(root, model, prompts, gens, "mixed")
    m = rec["metrics"]
    assert rec["info"]["jsquad_items"] == 4 and rec["info"]["generations"] == 8
    assert m["jsquad_exact_match"] == pytest.approx(50.0)
    assert 50 <= m["jsquad_f1"] < 100
    # ELYZA metrics over the four ELYZA answers only (one empty).
    assert m["empty_output_rate"] == pytest.approx(0.25)
    assert m["chrf"] == pytest.approx(chrf(outputs[:4], refs[:4])["chrf"])
    assert m["bleu"] == pytest.approx(bleu(outputs[:4], refs[:4])["bleu"])
    assert m["rouge_l"] == pytest.approx(rouge_l(outputs[:4], refs[:4])["rouge_l"])
    assert 0 < m["bleu"] < 100 and 0 < m["rouge_l"] < 100
    per = dict(items.group_by("task", "metric").len().select(
        pl.concat_str("task", "metric", separator="/"), "len").iter_rows())  # fmt: skip
    assert per["generation/bleu"] == per["generation/evaluator_score"] == 4
    assert per["jsquad/jsquad_exact_match"] == per["jsquad/jsquad_f1"] == 4
    em = items.filter(pl.col("metric") == "jsquad_exact_match")["value"].to_list()
    assert em == [100.0, 100.0, 0.0, 0.0]
    rouge = items.filter(pl.col("metric") == "rouge_l")["value"]
    assert rouge.mean() == pytest.approx(m["rouge_l"])


def test_answers_are_scored_stripped_like_the_training_texts(setup):
    """Leading blank lines of a generation do not change any metric (issue 6 fix)."""
    root, model, prompts = setup
    df = pl.read_parquet(prompts)
    answers = ["売上高は増加しました。", "はい。", "1. 東京\n2. 大阪", "わかりません"]
    answers += df["reference"].to_list()[4:]
    plain, _ = _evaluate(root, model, prompts, _generations(root, prompts, "p", answers), "p")
    padded = ["\n\n" + a + "\n" for a in answers]
    rec, items = _evaluate(root, model, prompts, _generations(root, prompts, "q", padded), "q")
    assert rec["metrics"] == plain["metrics"]
    # The evaluator saw "Human: ...\n\nAssistant: ..." exactly as the stripped HH texts read.
    ev = load_evaluator(root / "ev")
    asked = df["prompt"].to_list()[:4]
    layout = [
        f"Human: {p.strip()}\n\nAssistant: {a}" for p, a in zip(asked, answers[:4], strict=True)
    ]
    scored = items.filter(pl.col("metric") == "evaluator_score")["value"].to_list()
    assert scored == pytest.approx(ev.score(layout).tolist())


def test_bad_generations_are_named(setup, tmp_path):
    root, model, prompts = setup
    df = pl.read_parquet(prompts)
    gens = _generations(root, prompts, "bad", ["x"] * df.height)
    stray = pl.read_parquet(gens).with_columns(pl.lit("elyza/999").alias("id"))
    stray.write_parquet(tmp_path / "stray.parquet")
    with pytest.raises(DataError, match="generation id elyza/999 is not in the prompts"):
        _evaluate(root, model, prompts, tmp_path / "stray.parquet", "stray")
    noref = pl.read_parquet(gens).with_columns(pl.lit(None, dtype=pl.String).alias("reference"))
    noref.write_parquet(tmp_path / "noref.parquet")
    with pytest.raises(DataError, match=r"item elyza/\d+ \(elyza\) has no reference answer"):
        _evaluate(root, model, prompts, tmp_path / "noref.parquet", "noref")
    assert not (root / "noref.json").exists() and not (root / "stray.json").exists()
