"""Reference-based and surface metrics of generated answers.

chrF (sacrebleu) compares character n-grams, so it needs no word segmentation
and suits Japanese. Surface statistics (length, empty answers, repetition) catch
degenerate outputs that reference metrics only show as a low score.
"""

from __future__ import annotations

import numpy as np

from domainllm.errors import PipelineError


def _chrf_inputs(outputs: list[str], references: list[str]):
    from sacrebleu.metrics import CHRF

    if len(outputs) != len(references):
        raise PipelineError(f"{len(outputs)} outputs but {len(references)} references")
    if not outputs:
        raise PipelineError("no outputs to score")
    # Character 6-grams, beta 2, whitespace ignored: language-agnostic.
    return CHRF(), [o or "" for o in outputs], [r or "" for r in references]


def sentence_chrf(outputs: list[str], references: list[str]) -> list[float]:
    """chrF (0-100) of each output against its reference."""
    metric, outputs, references = _chrf_inputs(outputs, references)
    return [
        float(metric.sentence_score(o, [r]).score) for o, r in zip(outputs, references, strict=True)
    ]


def chrf(outputs: list[str], references: list[str]) -> dict:
    """Corpus chrF and the mean sentence chrF (0-100) of outputs against references."""
    metric, outputs, references = _chrf_inputs(outputs, references)
    corpus = metric.corpus_score(outputs, [references]).score
    return {
        "chrf": float(corpus),
        "chrf_sentence_mean": float(np.mean(sentence_chrf(outputs, references))),
    }


def repetition_ratio(text: str, n: int = 4) -> float:
    """Share of character n-grams that repeat an earlier one (0 = none, near 1 = a loop)."""
    grams = [text[i : i + n] for i in range(max(0, len(text) - n + 1))]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def length_stats(outputs: list[str], output_tokens: list[int] | None = None) -> dict:
    """Mean and median answer length in characters (and tokens), empty and repetition rates."""
    chars = np.asarray([len((o or "").strip()) for o in outputs], dtype=float)
    stats = {
        "output_chars_mean": float(chars.mean()),
        "output_chars_median": float(np.median(chars)),
        "empty_output_rate": float((chars == 0).mean()),
        "repetition_rate": float(np.mean([repetition_ratio(o or "") for o in outputs])),
    }
    if output_tokens is not None:
        stats["output_tokens_mean"] = float(np.mean(output_tokens))
    return stats


def generation_metrics(
    outputs: list[str], references: list[str], output_tokens: list[int] | None = None
) -> dict:
    """chrF against references plus length statistics, as one flat dict."""
    return {**chrf(outputs, references), **length_stats(outputs, output_tokens)}
