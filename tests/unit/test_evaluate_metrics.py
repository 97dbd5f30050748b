"""Tests of domainllm.evaluate.metrics: chrF and answer-shape statistics."""

from __future__ import annotations

import pytest

from domainllm.errors import PipelineError
from domainllm.evaluate.metrics import chrf, generation_metrics, length_stats, repetition_ratio
from tests.unit._tiny_lm import elyza_items


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


def test_chrf_needs_aligned_inputs():
    with pytest.raises(PipelineError):
        chrf(["a"], ["a", "b"])
    with pytest.raises(PipelineError):
        chrf([], [])


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
        "output_chars_mean",
        "output_chars_median",
        "empty_output_rate",
        "repetition_rate",
        "output_tokens_mean",
    }
    assert 0 < m["chrf"] < 100
