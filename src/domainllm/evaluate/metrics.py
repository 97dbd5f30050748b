"""Reference-based and surface metrics of generated answers, from maintained libraries.

- chrF (sacrebleu ``CHRF``: character 6-grams, beta 2, whitespace ignored): needs no
  word segmentation.
- BLEU (sacrebleu ``BLEU``) and ROUGE-L (Google's ``rouge_score``) over words. Japanese
  has no spaces, so both tokenise with ``tokenize``: ``ja-mecab`` (sacrebleu's MeCab
  tokenizer with the IPA dictionary, from the pip packages ``mecab-python3`` and
  ``ipadic``) or ``char`` (one token per character, sacrebleu's ``char`` tokenizer).
  ROUGE-L is given the same tokenizer as BLEU, so both count the same units.
- Exact match and F1 of extractive QA (JSQuAD): the SQuAD v1.1/v2 script's
  ``compute_exact``/``compute_f1`` as shipped in ``transformers``, given
  character-segmented strings (see :func:`qa_tokens`), best over the reference answers.
- Length statistics catch degenerate outputs that reference metrics only show as a low score.

Scores are on a 0-100 scale (as sacrebleu and the SQuAD/JGLUE scripts report them).
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

import numpy as np

from domainllm.errors import PipelineError

TOKENIZERS = ("ja-mecab", "char")


def _check(outputs: list[str], references: list) -> tuple[list[str], list]:
    if len(outputs) != len(references):
        raise PipelineError(f"{len(outputs)} outputs but {len(references)} references")
    if not outputs:
        raise PipelineError("no outputs to score")
    return [o or "" for o in outputs], references


@lru_cache(maxsize=4)
def word_tokenizer(tokenize: str = "ja-mecab"):
    """sacrebleu's tokenizer ``tokenize`` (a callable: text -> space-separated tokens)."""
    if tokenize == "ja-mecab":
        try:
            from sacrebleu.tokenizers.tokenizer_ja_mecab import TokenizerJaMecab

            return TokenizerJaMecab()
        except (ImportError, RuntimeError) as e:
            raise PipelineError(
                "config key 'evaluate.metrics.tokenize' is ja-mecab, which needs the pip "
                "packages mecab-python3 and ipadic (the eval extra); or set it to char"
            ) from e
    if tokenize == "char":
        from sacrebleu.tokenizers.tokenizer_char import TokenizerChar

        return TokenizerChar()
    raise PipelineError(
        f"config key 'evaluate.metrics.tokenize': unknown tokenizer '{tokenize}' "
        f"(known: {', '.join(TOKENIZERS)})"
    )


def _one_line(text: str) -> str:
    # sacrebleu's tokenizers work on one line; newlines are word boundaries.
    return " ".join((text or "").split())


# ---------------------------------------------------------------- chrF


def sentence_chrf(outputs: list[str], references: list[str]) -> list[float]:
    """chrF (0-100) of each output against its reference."""
    from sacrebleu.metrics import CHRF

    outputs, references = _check(outputs, references)
    metric = CHRF()
    return [
        float(metric.sentence_score(o, [r or ""]).score)
        for o, r in zip(outputs, references, strict=True)
    ]


def chrf(outputs: list[str], references: list[str]) -> dict:
    """Corpus chrF and the mean sentence chrF (0-100) of outputs against references."""
    from sacrebleu.metrics import CHRF

    outputs, references = _check(outputs, references)
    corpus = CHRF().corpus_score(outputs, [[r or "" for r in references]]).score
    return {
        "chrf": float(corpus),
        "chrf_sentence_mean": float(np.mean(sentence_chrf(outputs, references))),
    }


# ---------------------------------------------------------------- BLEU and ROUGE-L


def _bleu(tokenize: str, effective_order: bool):
    from sacrebleu.metrics import BLEU

    word_tokenizer(tokenize)  # a clear error when MeCab is missing
    return BLEU(tokenize=tokenize, effective_order=effective_order)


def sentence_bleu(outputs: list[str], references: list[str], tokenize: str = "ja-mecab"):
    """Sentence BLEU (0-100, effective n-gram order, as sacrebleu's sentence_score) per output."""
    outputs, references = _check(outputs, references)
    metric = _bleu(tokenize, True)
    return [
        float(metric.sentence_score(_one_line(o), [_one_line(r)]).score)
        for o, r in zip(outputs, references, strict=True)
    ]


def bleu(outputs: list[str], references: list[str], tokenize: str = "ja-mecab") -> dict:
    """Corpus BLEU (0-100) and its sacrebleu signature (which names the tokenizer)."""
    outputs, references = _check(outputs, references)
    metric = _bleu(tokenize, False)
    score = metric.corpus_score(
        [_one_line(o) for o in outputs], [[_one_line(r) for r in references]]
    )
    return {"bleu": float(score.score), "signature": str(metric.get_signature())}


class _RougeTokenizer:
    """The BLEU tokenizer in the interface ``rouge_score`` expects (``tokenize(text)``)."""

    def __init__(self, tokenize: str):
        self.name = tokenize
        self._tok = word_tokenizer(tokenize)

    def tokenize(self, text: str) -> list[str]:
        return self._tok(_one_line(text)).split()


def sentence_rouge_l(outputs: list[str], references: list[str], tokenize: str = "ja-mecab"):
    """ROUGE-L F-measure (0-100) of each output against its reference (``rouge_score``)."""
    from rouge_score.rouge_scorer import RougeScorer

    outputs, references = _check(outputs, references)
    scorer = RougeScorer(["rougeL"], tokenizer=_RougeTokenizer(tokenize))
    return [
        100.0 * scorer.score(r or "", o)["rougeL"].fmeasure
        for o, r in zip(outputs, references, strict=True)
    ]


def rouge_l(outputs: list[str], references: list[str], tokenize: str = "ja-mecab") -> dict:
    """Mean sentence ROUGE-L F-measure (0-100)."""
    return {"rouge_l": float(np.mean(sentence_rouge_l(outputs, references, tokenize)))}


# ---------------------------------------------------------------- extractive QA

_LATIN_RUN = re.compile(r"[a-z0-9]+|.", re.S)


def qa_answer(output: str) -> str:
    """The answer span of a generated QA reply: its first non-empty line, stripped
    (lm-evaluation-harness's JSQuAD task also stops at a blank line and strips)."""
    for line in (output or "").splitlines():
        if line.strip():
            return line.strip()
    return ""


def qa_tokens(text: str) -> str:
    """A text as the space-separated tokens the SQuAD script's F1 counts.

    NFKC, lower case, punctuation and symbol characters (Unicode categories P* and
    S*, so 「」、。・ too) removed; then one token per character, except that runs of
    ASCII letters and digits stay one token (so the SQuAD script's English article
    removal still sees words, and "1994" is one number); whitespace only separates.
    """
    chunks = unicodedata.normalize("NFKC", text or "").lower().split()
    kept = ["".join(ch for ch in c if unicodedata.category(ch)[0] not in "PS") for c in chunks]
    return " ".join(tok for c in kept for tok in _LATIN_RUN.findall(c))


def qa_item_scores(output: str, answers: list[str]) -> tuple[float, float]:
    """(exact match, F1), each 0 or 0-1, of one reply against the reference answers (best)."""
    from transformers.data.metrics.squad_metrics import compute_exact, compute_f1

    answers = [a for a in answers if a and qa_tokens(a)]
    if not answers:
        raise PipelineError("a QA item has no non-empty reference answer")
    pred = qa_tokens(qa_answer(output))
    golds = [qa_tokens(a) for a in answers]
    return (
        float(max(compute_exact(g, pred) for g in golds)),
        float(max(compute_f1(g, pred) for g in golds)),
    )


def qa_scores(outputs: list[str], answers: list[list[str]]) -> dict:
    """Exact match and F1 (0-100, mean over items) of QA replies, with per-item values."""
    outputs, answers = _check(outputs, answers)
    items = [qa_item_scores(o, list(a)) for o, a in zip(outputs, answers, strict=True)]
    em, f1 = np.asarray(items, dtype=float).reshape(-1, 2).T
    return {
        "exact_match": float(100 * em.mean()),
        "f1": float(100 * f1.mean()),
        "item_exact_match": em.tolist(),
        "item_f1": f1.tolist(),
    }


# ---------------------------------------------------------------- surface statistics


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
    outputs: list[str],
    references: list[str],
    output_tokens: list[int] | None = None,
    *,
    tokenize: str = "ja-mecab",
) -> dict:
    """chrF, BLEU and ROUGE-L against references plus length statistics, as one flat dict."""
    return {
        **chrf(outputs, references),
        "bleu": bleu(outputs, references, tokenize)["bleu"],
        **rouge_l(outputs, references, tokenize),
        **length_stats(outputs, output_tokens),
    }
