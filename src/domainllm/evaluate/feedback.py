"""A learned evaluator of response quality, trained on human feedback labels.

The ``lightgbm`` evaluator is a LightGBM binary classifier over TF-IDF character
n-grams (no word segmentation, so any language) plus surface text features
(length, lines, sentences, list items, questions, repetition). It is trained on
feedback_train (chosen = 1, rejected = 0) and validated on feedback_test.

The saved folder holds no pickle: LightGBM's text model (model.txt), the TF-IDF
vocabulary and idf weights (tfidf.json), evaluator.json (kind and feature
names), metrics.json and model_card.md. Evaluators register by name, so other
kinds (a BERT classifier, an LLM judge) plug into :func:`load_evaluator`.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import numpy as np

from domainllm.errors import DataError, PipelineError
from domainllm.io import atomic_path, read_json, write_json, write_text

log = logging.getLogger(__name__)

_EVALUATORS: dict[str, type] = {}
# Kinds defined in other modules: imported when a folder of that kind is first loaded,
# so importing this module never imports torch.
_LAZY_EVALUATORS = {"judge": "domainllm.evaluate.judge"}


def register_evaluator(name: str):
    """Class decorator registering an evaluator kind (with ``load(folder)`` classmethod)."""

    def deco(cls):
        cls.kind = name
        _EVALUATORS[name] = cls
        return cls

    return deco


# ---------------------------------------------------------------- text features

# Where the last answer of a dialogue starts: HH-RLHF's speaker tags or the
# pipeline's chat template header. A text without one is all answer.
_ANSWER_MARK = re.compile(r"\n\n(?:Assistant|アシスタント)[:：] ?|### アシスタント:\n")
_USER_MARK = re.compile(r"\n\n(?:Human|User|ユーザー)[:：] ?|### ユーザー:\n")
_SENT_END = re.compile(r"[.!?。！？]+(?:\s|$)")
_LIST_ITEM = re.compile(r"^\s*(?:[-*•・]|\d+[.)、．]|[（(]?\d+[）)])\s*", re.M)
_QUESTION = re.compile(r"[?？]")
_DIGIT = re.compile(r"\d")
_ASCII_LETTER = re.compile(r"[A-Za-z]")


def split_dialogue(text: str) -> tuple[str, str]:
    """Split a dialogue into (context, last answer); a plain text is all answer."""
    last = None
    for last in _ANSWER_MARK.finditer(text):  # noqa: B007 - the last match is wanted
        pass
    if last is None:
        return "", text
    return text[: last.start()], text[last.end() :]


def format_dialogue(prompt: str, answer: str) -> str:
    """A prompt and a model's answer in the HH-RLHF dialogue layout the evaluator learned."""
    return f"\n\nHuman: {prompt}\n\nAssistant: {answer}"


def _char_ngrams(text: str, n: int = 3) -> set[str]:
    text = text.lower()
    return {text[i : i + n] for i in range(len(text) - n + 1)}


ANSWER_FEATURES = [
    "log_chars",
    "lines",
    "sentences",
    "mean_sentence_chars",
    "list_items",
    "question_marks",
    "exclamation_marks",
    "digit_ratio",
    "ascii_letter_ratio",
    "unique_char_ratio",
    "repeated_4gram_ratio",
    "ends_with_question",
]
CONTEXT_FEATURES = [
    "context_log_chars",
    "context_turns",
    "request_log_chars",
    "answer_request_overlap",
    "request_coverage",
    "answer_context_overlap",
    "answer_request_log_ratio",
]
TEXT_FEATURES = ANSWER_FEATURES + CONTEXT_FEATURES


def answer_features(answer: str) -> list[float]:
    """Surface features of an answer, in the order of :data:`ANSWER_FEATURES`."""
    n = len(answer)
    lines = [ln for ln in answer.split("\n") if ln.strip()]
    sentences = max(1, len(_SENT_END.findall(answer)))
    grams = [answer[i : i + 4] for i in range(max(0, n - 3))]
    return [
        float(np.log1p(n)),
        float(len(lines)),
        float(sentences),
        n / sentences,
        float(len(_LIST_ITEM.findall(answer))),
        float(len(_QUESTION.findall(answer))),
        float(answer.count("!") + answer.count("！")),
        len(_DIGIT.findall(answer)) / n if n else 0.0,
        len(_ASCII_LETTER.findall(answer)) / n if n else 0.0,
        len(set(answer)) / n if n else 0.0,
        1 - len(set(grams)) / len(grams) if grams else 0.0,
        float(answer.rstrip().endswith(("?", "？"))),
    ]


def text_features(text: str) -> list[float]:
    """Features of one text (answer + its context), in the order of :data:`TEXT_FEATURES`."""
    context, answer = split_dialogue(text)
    request = _USER_MARK.split(context)[-1] if context else ""
    ga, gr, gc = _char_ngrams(answer), _char_ngrams(request), _char_ngrams(context)
    return answer_features(answer) + [
        float(np.log1p(len(context))),
        float(len(_USER_MARK.findall(context))),
        float(np.log1p(len(request))),
        len(ga & gr) / len(ga) if ga else 0.0,
        len(ga & gr) / len(gr) if gr else 0.0,
        len(ga & gc) / len(ga) if ga else 0.0,
        float(np.log1p(len(answer)) - np.log1p(len(request))),
    ]


# ---------------------------------------------------------------- metrics


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """ECE over ``bins`` equal-width probability bins (weighted by bin size)."""
    y, p = np.asarray(y, float), np.asarray(p, float)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(y[mask].mean() - p[mask].mean())
    return float(ece)


def paired_accuracy(pair_ids: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """Share of pairs whose good text scores above its bad one (ties count half)."""
    good, bad = {}, {}
    for pid, y, s in zip(pair_ids, labels, scores, strict=True):
        (good if y == 1 else bad)[int(pid)] = float(s)
    common = sorted(set(good) & set(bad))
    if not common:
        return float("nan")
    wins = [1.0 if good[k] > bad[k] else 0.5 if good[k] == bad[k] else 0.0 for k in common]
    return float(np.mean(wins))


def auc_standard_error(auc: float, n_pos: int, n_neg: int) -> float:
    """Standard error of an AUC (Hanley and McNeil, 1982)."""
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc**2) + (n_neg - 1) * (q2 - auc**2)) / (
        n_pos * n_neg
    )
    return float(np.sqrt(max(var, 0.0)))


def classification_metrics(pair_ids, labels, scores) -> dict:
    """AUC (and its standard error), accuracy at 0.5, ECE, Brier, log loss, paired accuracy."""
    from sklearn.metrics import accuracy_score, brier_score_loss, log_loss, roc_auc_score

    labels, scores = np.asarray(labels), np.asarray(scores)
    auc = float(roc_auc_score(labels, scores))
    return {
        "auc": auc,
        "auc_se": auc_standard_error(auc, int((labels == 1).sum()), int((labels == 0).sum())),
        "accuracy": float(accuracy_score(labels, scores >= 0.5)),
        "ece": expected_calibration_error(labels, scores),
        "brier": float(brier_score_loss(labels, scores)),
        "log_loss": float(log_loss(labels, np.clip(scores, 1e-7, 1 - 1e-7), labels=[0, 1])),
        "paired_accuracy": paired_accuracy(pair_ids, labels, scores),
        "n_texts": int(len(labels)),
        "n_pairs": int(len(set(np.asarray(pair_ids).tolist()))),
    }


# ---------------------------------------------------------------- the evaluator


def _read_feedback(path: str):
    import polars as pl

    try:
        df = pl.read_parquet(path)
    except Exception as e:  # noqa: BLE001 - polars raises several types for a bad file
        raise DataError(f"{path}: cannot read Parquet: {e}") from e
    missing = [c for c in ("pair_id", "text", "label") if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    bad = df.filter(~pl.col("label").is_in([0, 1]))
    if bad.height:
        raise DataError(
            f"{path}: label must be 0 or 1, found {bad['label'][0]} (pair {bad['pair_id'][0]})"
        )
    if df["label"].n_unique() < 2:
        raise DataError(f"{path}: needs both labels (0 and 1)")
    return df


@register_evaluator("lightgbm")
class LGBMFeedbackEvaluator:
    """TF-IDF character n-grams + text features -> LightGBM -> P(good).

    The n-grams are taken from the dialogue before the answer (what was asked: it
    decides whether a long, compliant answer is good or bad), the surface
    features from the answer and its relation to the request. On the sample
    HH-RLHF pairs, n-grams of the answer itself only added noise (lower held-out AUC).
    """

    TFIDF = dict(
        analyzer="char_wb", ngram_range=(3, 5), min_df=5, max_features=1000, sublinear_tf=True
    )
    LGBM = {
        "objective": "binary",
        "learning_rate": 0.03,
        "num_leaves": 7,
        "min_data_in_leaf": 50,
        "feature_fraction": 0.5,
        "lambda_l2": 5.0,
        "force_row_wise": True,
        "deterministic": True,
        "verbosity": -1,
    }

    def __init__(self, vectorizer, booster, feature_names: list[str]):
        self.vectorizer = vectorizer
        self.booster = booster
        self.feature_names = feature_names

    # -- features
    CONTEXT_CHARS = 600

    @classmethod
    def context_window(cls, text: str) -> str:
        """The end of the dialogue before the answer: the latest request matters most, and
        cutting long histories keeps n-gram counting fast."""
        return split_dialogue(text)[0][-cls.CONTEXT_CHARS :]

    def features(self, texts: list[str]):
        from scipy import sparse

        texts = ["" if t is None else str(t) for t in texts]
        dense = np.asarray([text_features(t) for t in texts], dtype=np.float64).reshape(
            len(texts), -1
        )
        contexts = [self.context_window(t) for t in texts]
        return sparse.hstack(
            [sparse.csr_matrix(dense), self.vectorizer.transform(contexts)],
            format="csr",
            dtype=np.float64,
        )

    def score(self, texts: list[str]) -> np.ndarray:
        """P(good) of each text, in [0, 1]."""
        if len(texts) == 0:
            return np.zeros(0)
        return np.asarray(self.booster.predict(self.features(list(texts))), dtype=np.float64)

    # -- persistence without pickle
    def save(self, folder: Path) -> None:
        folder = Path(folder)
        self.booster.save_model(str(folder / "model.txt"))
        vec = self.vectorizer
        params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.TFIDF.items()}
        write_json(
            {
                "params": params,
                "vocabulary": {k: int(v) for k, v in vec.vocabulary_.items()},
                "idf": [float(x) for x in vec.idf_],
            },
            folder / "tfidf.json",
        )
        write_json({"kind": self.kind, "features": self.feature_names}, folder / "evaluator.json")

    @classmethod
    def load(cls, folder: str | Path) -> LGBMFeedbackEvaluator:
        import lightgbm as lgb
        from sklearn.feature_extraction.text import TfidfVectorizer

        folder = Path(folder)
        for name in ("model.txt", "tfidf.json", "evaluator.json"):
            if not (folder / name).is_file():
                raise DataError(f"{folder}: not an evaluator folder ({name} missing)")
        spec = read_json(folder / "tfidf.json")
        params = dict(spec["params"])
        params["ngram_range"] = tuple(params["ngram_range"])
        vec = TfidfVectorizer(vocabulary=spec["vocabulary"], **params)
        vec.idf_ = np.asarray(spec["idf"], dtype=np.float64)
        booster = lgb.Booster(model_file=str(folder / "model.txt"))
        meta = read_json(folder / "evaluator.json")
        return cls(vec, booster, meta["features"])

    @classmethod
    def fit(
        cls,
        texts: list[str],
        labels: np.ndarray,
        *,
        num_boost_round: int,
        seed: int,
        num_threads: int,
    ):
        import lightgbm as lgb
        from sklearn.feature_extraction.text import TfidfVectorizer

        vec = TfidfVectorizer(**cls.TFIDF)
        try:
            vec.fit([cls.context_window(t) for t in texts])
        except ValueError as e:  # every context empty or too rare: no n-gram kept
            raise DataError(
                f"feedback texts give no context n-grams (min_df {cls.TFIDF['min_df']}): {e}"
            ) from e
        names = TEXT_FEATURES + [f"ctx_tfidf_{i}" for i in range(len(vec.vocabulary_))]
        ev = cls(vec, None, names)
        X = ev.features(texts)
        params = dict(cls.LGBM, seed=seed, num_threads=num_threads)
        ev.booster = lgb.train(
            params, lgb.Dataset(X, label=np.asarray(labels), feature_name=names), num_boost_round
        )
        return ev, X


def load_evaluator(path: str | Path):
    """Load a trained evaluator folder; ``.score(texts)`` returns P(good) per text."""
    folder = Path(path)
    meta_path = folder / "evaluator.json"
    if not meta_path.is_file():
        raise DataError(f"{folder}: not an evaluator folder (evaluator.json missing)")
    kind = read_json(meta_path).get("kind")
    if kind not in _EVALUATORS and kind in _LAZY_EVALUATORS:
        import importlib

        importlib.import_module(_LAZY_EVALUATORS[kind])
    if kind not in _EVALUATORS:
        raise DataError(
            f"{meta_path}: unknown evaluator kind '{kind}' (known: {', '.join(_EVALUATORS)})"
        )
    return _EVALUATORS[kind].load(folder)


def _model_card(metrics: dict, train: str, test: str) -> str:
    m, t = metrics["test"], metrics["train"]
    rounds, seed = metrics["num_boost_round"], metrics["seed"]
    return f"""# Feedback evaluator (LightGBM over character n-grams)

Scores a text with P(good): the probability that a human would prefer it.

## Data
- Training: `{train}` — {t["n_pairs"]} preference pairs ({t["n_texts"]} texts).
- Validation: `{test}` — {m["n_pairs"]} held-out pairs ({m["n_texts"]} texts);
  the two texts of a pair are always in the same split.
- Labels: chosen = 1 (good), rejected = 0 (bad), from HH-RLHF-style `{{chosen, rejected}}`
  dialogues.

## Model
- Features: TF-IDF character 3-5-grams of the dialogue before the answer
  ({metrics["tfidf_features"]} kept; no tokenizer, any language) plus {len(TEXT_FEATURES)}
  surface features of the answer and its relation to the request:
  {", ".join(TEXT_FEATURES)}.
- LightGBM binary classifier, {rounds} rounds, seed {seed}, deterministic.
- Files: `model.txt` (LightGBM text model), `tfidf.json` (vocabulary and idf), `evaluator.json`.

## Validation metrics (held-out pairs)
| metric | value |
|---|---|
| AUC (± standard error) | {m["auc"]:.4f} ± {m["auc_se"]:.4f} |
| accuracy (threshold 0.5) | {m["accuracy"]:.4f} |
| paired accuracy (chosen scored above rejected) | {m["paired_accuracy"]:.4f} |
| ECE (10 bins) | {m["ece"]:.4f} |
| Brier score | {m["brier"]:.4f} |

## Use
`load_evaluator(folder).score(texts)` returns P(good) per text. Score a model's answer in the
layout it learned: `format_dialogue(prompt, answer)` ("Human: ... Assistant: ...").

## Limits
- The labels are English HH-RLHF preferences standing in for product feedback: the evaluator
  learns what separates preferred from rejected *English assistant dialogues*, mostly through
  surface cues. On Japanese model outputs the character n-grams rarely match, so scores rest
  on the surface features; compare versions with it, do not read it as an absolute quality.
- Chosen and rejected dialogues share their opening turns, so the signal is weak by design;
  pairwise preference accuracy well below 100% is expected.
- Scores are calibrated only on the feedback distribution (see ECE); expect drift elsewhere.
- Replace the training files with real, in-domain feedback before relying on it.
"""


def train_evaluator(
    train: str,
    test: str,
    output: str,
    *,
    kind: str = "lightgbm",
    num_boost_round: int = 200,
    seed: int = 1234,
    num_threads: int = 1,
) -> dict:
    """Train an evaluator on feedback_train, validate on feedback_test, save the folder.

    Args:
        train: feedback_train.parquet (pair_id, text, label).
        test: feedback_test.parquet.
        output: evaluator folder to write (atomically).
        kind: registered evaluator kind.
        num_boost_round: LightGBM rounds.
        seed: seeds LightGBM.
        num_threads: LightGBM threads (fixed, for identical models across runs).

    Returns:
        metrics.json content.
    """
    if kind not in _EVALUATORS or not hasattr(_EVALUATORS[kind], "fit"):
        raise PipelineError(
            f"config key 'evaluate.evaluator.type': unknown or untrainable '{kind}'"
        )
    t0 = time.perf_counter()
    tr, te = _read_feedback(train), _read_feedback(test)
    overlap = set(tr["pair_id"].to_list()) & set(te["pair_id"].to_list())
    if overlap:
        raise DataError(f"{train} and {test} share pair_id(s), e.g. {sorted(overlap)[:3]}")
    ev, X_train = _EVALUATORS[kind].fit(
        tr["text"].to_list(),
        tr["label"].to_numpy(),
        num_boost_round=num_boost_round,
        seed=seed,
        num_threads=num_threads,
    )
    train_scores = np.asarray(ev.booster.predict(X_train), dtype=np.float64)
    test_scores = ev.score(te["text"].to_list())
    metrics = {
        "kind": kind,
        "num_boost_round": num_boost_round,
        "seed": seed,
        "tfidf_features": len(ev.vectorizer.vocabulary_),
        "train": classification_metrics(
            tr["pair_id"].to_numpy(), tr["label"].to_numpy(), train_scores
        ),
        "test": classification_metrics(
            te["pair_id"].to_numpy(), te["label"].to_numpy(), test_scores
        ),
    }
    metrics["seconds"] = time.perf_counter() - t0
    with atomic_path(output, directory=True) as tmp:
        ev.save(tmp)
        write_json(metrics, tmp / "metrics.json")
        write_text(_model_card(metrics, train, test), tmp / "model_card.md")
    log.info("evaluator test metrics: %s", json.dumps(metrics["test"]))
    return metrics
