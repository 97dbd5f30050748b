"""Tests of domainllm.evaluate.metrics: chrF, BLEU, ROUGE-L, QA exact match/F1, answer shape."""

from __future__ import annotations

import pytest

from domainllm.data.jsquad import read_jsquad
from domainllm.errors import PipelineError
from domainllm.evaluate.metrics import (
    bleu,
    chrf,
    generation_metrics,
    length_stats,
    qa_answer,
    qa_item_scores,
    qa_scores,
    qa_tokens,
    repetition_ratio,
    rouge_l,
    sentence_bleu,
    sentence_rouge_l,
    word_tokenizer,
)
from tests.unit._tiny_lm import SAMPLES, elyza_items

JSQUAD = SAMPLES / "jglue" / "jsquad-v1.3_valid-v1.3.json"


def test_chrf_orders_japanese_answers():
    items = elyza_items(6)
    refs = [x["output"] for x in items]
    exact = chrf(refs, refs)
    assert exact["chrf"] == pytest.approx(100.0)
    assert exact["chrf_sentence_mean"] == pytest.approx(100.0)
    # Half of each reference scores between an exact copy and another item's answer.
    half = chrf([r[: len(r) // 2] for r in refs], refs)
    shifted = chrf(refs[1:] + refs[:1], refs)
    empty = chrf([""] * len(refs), refs)
    assert 100 > half["chrf"] > shifted["chrf"] > empty["chrf"] == 0


@pytest.mark.parametrize("tokenize", ["ja-mecab", "char"])
def test_bleu_and_rouge_l_order_japanese_answers(tokenize):
    refs = [x["output"] for x in elyza_items(6)]
    half = [r[: len(r) // 2] for r in refs]
    shifted = refs[1:] + refs[:1]
    for metric, key in ((bleu, "bleu"), (rouge_l, "rouge_l")):
        exact = metric(refs, refs, tokenize)[key]
        assert exact == pytest.approx(100.0)
        assert exact > metric(half, refs, tokenize)[key] > metric(shifted, refs, tokenize)[key]
        assert metric([""] * 6, refs, tokenize)[key] == 0
    assert f"tok:{tokenize}" in bleu(refs, refs, tokenize)["signature"]
    assert sentence_bleu(refs[:2], refs[:2], tokenize) == pytest.approx([100.0, 100.0])


def test_mecab_splits_words_and_char_splits_characters():
    # MeCab (IPA dictionary) finds the words; the char tokenizer one token per character.
    assert word_tokenizer("ja-mecab")("今日は良い天気です。").split() == [
        "今日", "は", "良い", "天気", "です", "。",
    ]  # fmt: skip
    assert word_tokenizer("char")("天気").split() == ["天", "気"]
    out, ref = ["今日は良い天気です。"], ["今日はいい天気ですね。"]
    # The word "良い" vs "いい" costs a whole word with MeCab, one character with char.
    assert sentence_rouge_l(out, ref, "ja-mecab")[0] < sentence_rouge_l(out, ref, "char")[0]
    with pytest.raises(PipelineError, match="unknown tokenizer 'spaces'"):
        word_tokenizer("spaces")


def test_metrics_need_aligned_inputs():
    for metric in (chrf, bleu, rouge_l):
        with pytest.raises(PipelineError):
            metric(["a"], ["a", "b"])
        with pytest.raises(PipelineError):
            metric([], [])


def test_qa_normalisation_and_scores():
    assert qa_tokens("１９９４年、NHK　ＤＡＴＡ。") == "1994 年 nhk data"
    assert qa_tokens("「小笠原・諸島」") == "小 笠 原 諸 島"
    assert qa_answer("\n 小笠原諸島 \nです。") == "小笠原諸島"
    # Best over the reference answers; punctuation and full-width forms do not count.
    assert qa_item_scores("小笠原諸島。", ["小笠原諸島を除く日本", "小笠原諸島"]) == (1.0, 1.0)
    em, f1 = qa_item_scores("小笠原", ["小笠原諸島"])
    assert em == 0 and f1 == pytest.approx(2 * (3 / 3) * (3 / 5) / (3 / 3 + 3 / 5))
    assert qa_item_scores("", ["東アジア"]) == (0.0, 0.0)
    with pytest.raises(PipelineError, match="no non-empty reference"):
        qa_item_scores("a", ["", "。"])


def test_qa_scores_on_jsquad_answers():
    rows = read_jsquad(JSQUAD)[:40]
    answers = [r["answers"] for r in rows]
    exact = qa_scores([r["reference"] for r in rows], answers)
    assert exact["exact_match"] == exact["f1"] == 100.0
    # A chatty reply around the span: no exact match, partial character F1.
    chatty = qa_scores([f"答えは{r['reference']}です。" for r in rows], answers)
    assert chatty["exact_match"] == 0 and 30 < chatty["f1"] < 100
    wrong = qa_scores([r["reference"] for r in rows[1:] + rows[:1]], answers)
    assert wrong["f1"] < chatty["f1"]
    assert len(exact["item_f1"]) == 40


def test_length_and_repetition():
    assert repetition_ratio("abcdefgh") == 0
    assert repetition_ratio("また、" * 20) > 0.9
    stats = length_stats(["abc", "", "また、" * 10], [3, 1, 30])
    assert stats["output_chars_mean"] == pytest.approx((3 + 0 + 30) / 3)
    assert stats["output_chars_median"] == 3
    assert stats["empty_output_rate"] == pytest.approx(1 / 3)
    assert stats["output_tokens_mean"] == pytest.approx(34 / 3)
    assert 0 < stats["repetition_rate"] < 1


def test_generation_metrics_flat_and_finite():
    m = generation_metrics(["売上高は増加した"], ["売上高は増加しました"], [5])
    assert set(m) == {
        "chrf",
        "chrf_sentence_mean",
        "bleu",
        "rouge_l",
        "output_chars_mean",
        "output_chars_median",
        "empty_output_rate",
        "repetition_rate",
        "output_tokens_mean",
    }
    assert 0 < m["chrf"] < 100 and 0 < m["rouge_l"] < 100 and 0 <= m["bleu"] < 100
