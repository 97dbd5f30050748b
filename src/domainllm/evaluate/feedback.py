"""Evaluators of response quality trained on human feedback labels.

Every evaluator is trained on feedback_train (chosen = 1, rejected = 0), validated
on the held-out feedback_test, and saved as a folder: evaluator.json (kind and
settings), metrics.json (train and held-out metrics), test_scores.parquet (its
held-out scores: pair_id, label, score), model_card.md and the model files.
``load_evaluator(folder).score(texts)`` returns P(good) per text. Kinds register
by name (:func:`register_evaluator`); heavy ones are imported only when used:

- ``lightgbm`` (here): LightGBM over TF-IDF n-grams (words from the MeCab analyser
  with the UniDic-lite dictionary through fugashi, or characters) plus surface text
  features, optionally stacked on other evaluators' scores, as in the Automated
  Essay Scoring solutions. No pickle: LightGBM's text model and the TF-IDF
  vocabulary as JSON.
- ``bert`` (:mod:`domainllm.evaluate.bert`): a fine-tuned BERT-family classifier.

The config lists the evaluators to train (``evaluate.evaluators``), each a
``{name, type, ...options}`` entry checked by :func:`check_evaluator_specs`.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import re
import time
from pathlib import Path

import numpy as np

from domainllm.errors import ConfigError, DataError, PipelineError
from domainllm.io import atomic_path, read_json, write_json, write_parquet, write_text

log = logging.getLogger(__name__)

_EVALUATORS: dict[str, type] = {}
# Kinds whose module imports heavy libraries: imported on first use.
_LAZY = {"bert": "domainllm.evaluate.bert", "judge": "domainllm.evaluate.judge"}


def register_evaluator(name: str):
    """Class decorator registering an evaluator kind.

    The class has ``load(folder)``, ``score(texts)``, ``save(folder)`` and, to be
    trainable, ``fit(train_df, *, seed, num_threads, stack, **options)`` returning
    ``(evaluator, train_scores, info)`` and ``model_card(metrics, train, test)``.
    """

    def deco(cls):
        cls.kind = name
        _EVALUATORS[name] = cls
        return cls

    return deco


def evaluator_class(kind: str):
    """The registered class of ``kind`` (importing its module when it is a lazy one)."""
    if kind not in _EVALUATORS and kind in _LAZY:
        importlib.import_module(_LAZY[kind])
    if kind not in _EVALUATORS:
        known = sorted(set(_EVALUATORS) | set(_LAZY))
        raise PipelineError(f"unknown evaluator kind '{kind}' (known: {', '.join(known)})")
    return _EVALUATORS[kind]


# ---------------------------------------------------------------- config entries

# Options of each trainable kind and their defaults (config/schema.yaml documents them).
EVALUATOR_OPTIONS = {
    "lightgbm": {"features": "word", "num_boost_round": 200, "stack": []},
    "bert": {
        "model": None,
        "epochs": 1,
        "max_len": 256,
        "batch_size": 16,
        "learning_rate": 5e-5,
        "max_train_pairs": None,
        "max_steps": None,
    },
}
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def check_evaluator_specs(specs: list[dict], key: str = "evaluate.evaluators") -> list[dict]:
    """Check the configured evaluators and fill each kind's defaults.

    Raises:
        ConfigError: naming ``key[i].option`` of a bad entry: no or a repeated name,
            an unknown type, an option of another type, a ``stack`` naming an
            evaluator not listed before it.
    """
    if not isinstance(specs, list) or not specs:
        raise ConfigError(f"config key '{key}': list at least one evaluator")
    out, seen = [], set()
    for i, spec in enumerate(specs):

        def at(option: str = "", i=i) -> str:
            return f"config key '{key}[{i}]{option}'"

        if not isinstance(spec, dict):
            raise ConfigError(f"{at()}: expected a mapping {{name, type, ...}}")
        name, kind = spec.get("name"), spec.get("type")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"{at('.name')}: {name!r} must match {_NAME.pattern}")
        if name in seen:
            raise ConfigError(f"{at('.name')}: '{name}' is listed twice")
        if kind not in EVALUATOR_OPTIONS:
            raise ConfigError(
                f"{at('.type')}: unknown evaluator type {kind!r} "
                f"(trainable: {', '.join(EVALUATOR_OPTIONS)})"
            )
        options = EVALUATOR_OPTIONS[kind]
        for k in spec:
            if k not in ("name", "type") and k not in options:
                raise ConfigError(
                    f"{at('.' + k)}: not an option of type '{kind}' (options: {', '.join(options)})"
                )
        full = {"name": name, "type": kind, **options, **spec}
        for s in full.get("stack", []):
            if s not in seen:
                raise ConfigError(
                    f"{at('.stack')}: '{s}' is not an evaluator listed before '{name}'"
                )
        seen.add(name)
        out.append(full)
    return out


# ---------------------------------------------------------------- text features

# Where the last answer of a dialogue starts: HH-RLHF's speaker tags or the
# pipeline's chat template header. A text without one is all answer.
_ANSWER_MARK = re.compile(r"\n\n(?:Assistant|アシスタント)[:：] ?|### アシスタント:\n")
# A user turn starts the text (stripped dialogues: "Human: ...") or follows a blank line.
_USER_MARK = re.compile(r"(?:^|\n\n)(?:Human|User|ユーザー)[:：] ?|### ユーザー:\n")
_SENT_END = re.compile(r"[.!?。！？]+(?:\s|$)")
_PARAGRAPH = re.compile(r"\n[ \t\u3000]*\n")
_LIST_ITEM = re.compile(r"^\s*(?:[-*•・]|\d+[.)、．]|[（(]?\d+[）)])\s*", re.M)
_DIGIT = re.compile(r"\d")
_ASCII_LETTERS = re.compile(r"[A-Za-z]+")


def split_dialogue(text: str) -> tuple[str, str]:
    """Split a dialogue into (context, last answer); a plain text is all answer."""
    last = None
    for last in _ANSWER_MARK.finditer(text):  # noqa: B007 - the last match is wanted
        pass
    if last is None:
        return "", text
    return text[: last.start()], text[last.end() :]


def format_dialogue(prompt: str, answer: str) -> str:
    """A prompt and a model's answer in the layout the evaluators learned.

    The HH-RLHF dialogues are stripped when read (domainllm.data.feedback), so a
    one-turn training text reads ``Human: ...\\n\\nAssistant: ...``; prompt and
    answer are stripped here too, so a generation's leading newlines neither add a
    blank-line turn boundary nor change the surface features.
    """
    return f"Human: {(prompt or '').strip()}\n\nAssistant: {(answer or '').strip()}".strip()


_WAKATI = None


def wakati(text: str) -> list[str]:
    """Words of ``text`` by MeCab with the UniDic-lite dictionary (fugashi, wakati mode)."""
    global _WAKATI
    if _WAKATI is None:
        try:
            import fugashi
        except ImportError as e:
            raise PipelineError(
                "the feedback evaluators' text features need the pip packages fugashi and "
                "unidic-lite (the eval extra)"
            ) from e
        _WAKATI = fugashi.Tagger("-Owakati")
    # MeCab reads one sentence: line breaks are word boundaries anyway.
    return _WAKATI.parse(text.replace("\n", " ")).split()


def word_tokenizer_version() -> str:
    """The word tokenizer's packages and versions (recorded in the evaluator folder)."""
    from importlib.metadata import version

    return f"fugashi {version('fugashi')}, unidic-lite {version('unidic-lite')}"


ANSWER_FEATURES = [
    "log_chars",
    "lines",
    "paragraphs",
    "sentences",
    "mean_sentence_chars",
    "list_items",
    "question_marks",
    "exclamation_marks",
    "digit_ratio",
    "ascii_letter_ratio",
    "unique_char_ratio",
    "repeated_word_ratio",
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
# Only the end of a long dialogue history is read (the latest request matters most,
# and it keeps feature extraction fast), and at most this much of an answer is
# segmented into words for the overlap features.
CONTEXT_CHARS = 600
ANSWER_CHARS = 2000


def answer_features(answer: str, words: list[str] | None = None) -> list[float]:
    """Surface features of an answer, in the order of :data:`ANSWER_FEATURES`.

    ``repeated_word_ratio`` (1 - distinct/all words) is high for answers that loop;
    ``words`` are the answer's words when already segmented (:func:`wakati`).
    """
    n = len(answer)
    sentences = max(1, len(_SENT_END.findall(answer)))
    if words is None:
        words = wakati(answer[:ANSWER_CHARS].lower()) if answer else []
    return [
        math.log1p(n),
        float(sum(1 for ln in answer.split("\n") if ln.strip())),
        float(sum(1 for p in _PARAGRAPH.split(answer) if p.strip())),
        float(sentences),
        n / sentences,
        float(len(_LIST_ITEM.findall(answer))),
        float(answer.count("?") + answer.count("？")),
        float(answer.count("!") + answer.count("！")),
        len(_DIGIT.findall(answer)) / n if n else 0.0,
        sum(map(len, _ASCII_LETTERS.findall(answer))) / n if n else 0.0,
        len(set(answer)) / n if n else 0.0,
        1 - len(set(words)) / len(words) if words else 0.0,
        float(answer.rstrip().endswith(("?", "？"))),
    ]


def _words(tokens: list[str]) -> set[str]:
    # Words for overlap: punctuation and symbols carry no content.
    return {t for t in tokens if t[0].isalnum()}


def text_features_and_window(text: str) -> tuple[list[float], str, list[str]]:
    """Features of one text (:data:`TEXT_FEATURES` order), its context window and the
    window's lower-cased words (what the word TF-IDF counts): one segmentation for both."""
    context, answer = split_dialogue(text)
    window = context[-CONTEXT_CHARS:]
    request = _USER_MARK.split(window)[-1] if window else ""
    window_tokens = wakati(window.lower()) if window else []
    answer_tokens = wakati(answer[:ANSWER_CHARS].lower()) if answer else []
    wa = _words(answer_tokens)
    wr = _words(wakati(request.lower())) if request else set()
    wc = _words(window_tokens)
    shared = len(wa & wr)
    feats = answer_features(answer, answer_tokens) + [
        math.log1p(len(context)),
        float(len(_USER_MARK.findall(context))),
        math.log1p(len(request)),
        shared / len(wa) if wa else 0.0,
        shared / len(wr) if wr else 0.0,
        len(wa & wc) / len(wa) if wa else 0.0,
        math.log1p(len(answer)) - math.log1p(len(request)),
    ]
    return feats, window, window_tokens


def text_features(text: str) -> list[float]:
    """Features of one text (answer + its context), in the order of :data:`TEXT_FEATURES`.

    Overlaps between answer, latest request and context are shares of shared words
    (MeCab/UniDic-lite segmentation, so Japanese and English alike).
    """
    return text_features_and_window(text)[0]


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


# ---------------------------------------------------------------- data


def read_feedback(path: str):
    """Read labelled feedback texts (pair_id, text, label: 0 bad, 1 good).

    Labels come back as Int64 and missing texts as "".

    Raises:
        DataError: naming ``path`` (and the first bad row): unreadable, a column
            missing, no rows, a row without a label (unlabelled data), a label
            other than 0/1, or a single class (training, AUC and the paired
            check need both).
    """
    import polars as pl

    try:
        df = pl.read_parquet(path)
    except Exception as e:  # noqa: BLE001 - polars raises several types for a bad file
        raise DataError(f"{path}: cannot read Parquet: {e}") from e
    missing = [c for c in ("pair_id", "text", "label") if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (unlabelled data?)")
    if df.height == 0:
        raise DataError(f"{path}: no labelled texts")
    rows = df.with_row_index("row")
    unlabelled = rows.filter(pl.col("label").is_null())
    if unlabelled.height:
        raise DataError(
            f"{path}: row {unlabelled['row'][0]} has no label (pair {unlabelled['pair_id'][0]}; "
            f"{unlabelled.height} of {df.height} rows unlabelled)"
        )
    bad = rows.filter(~pl.col("label").is_in([0, 1]))
    if bad.height:
        raise DataError(
            f"{path}: row {bad['row'][0]} (pair {bad['pair_id'][0]}): label must be 0 or 1, "
            f"found {bad['label'][0]}"
        )
    if df["label"].n_unique() < 2:
        raise DataError(
            f"{path}: every text has label {df['label'][0]}; needs both labels (good 1 and bad 0)"
        )
    return df.with_columns(pl.col("label").cast(pl.Int64), pl.col("text").fill_null(""))


def sample_pairs(df, max_pairs: int | None, seed: int):
    """At most ``max_pairs`` whole pairs of ``df`` (seeded), in their original order."""
    import polars as pl

    if max_pairs is None:
        return df
    ids = df["pair_id"].unique(maintain_order=True).to_list()
    if len(ids) <= max_pairs:
        return df
    keep = np.random.default_rng(seed).choice(len(ids), size=max_pairs, replace=False)
    return df.filter(pl.col("pair_id").is_in([ids[i] for i in keep]))


# ---------------------------------------------------------------- stacking


def load_stack(folders: list[str | Path]) -> list[tuple[str, object]]:
    """``(name, evaluator)`` of each stacked evaluator folder (name = folder name)."""
    return [(Path(f).name, load_evaluator(f)) for f in folders]


def stack_scores(stack: list[tuple[str, object]], texts: list[str]) -> np.ndarray:
    """Scores of the stacked evaluators as an (n_texts, n_stacked) array."""
    if not stack:
        return np.zeros((len(texts), 0))
    return np.column_stack([np.asarray(ev.score(texts), dtype=np.float64) for _, ev in stack])


# ---------------------------------------------------------------- the LightGBM evaluator


class WordNgrams:
    """Analyzer over pre-segmented words: their 1..n-grams (CountVectorizer's ``analyzer``).

    Fitting goes through scikit-learn's CountVectorizer (vocabulary, ``min_df``,
    ``max_features``). Scoring counts the in-vocabulary n-grams here
    (:meth:`count_matrix`): CountVectorizer counts by catching a KeyError per
    unknown n-gram, which dominated scoring time.
    """

    def __init__(self, ngram_range: tuple[int, int]):
        self.ngram_range = tuple(ngram_range)

    def __call__(self, tokens: list[str]) -> list[str]:
        lo, hi = self.ngram_range
        grams = list(tokens) if lo == 1 else []
        for n in range(max(2, lo), hi + 1):
            grams += map(" ".join, zip(*(tokens[i:] for i in range(n)), strict=False))
        return grams

    def count_matrix(self, docs: list[list[str]], vocabulary: dict[str, int]):
        """CSR counts of the in-vocabulary n-grams of each document (as CountVectorizer)."""
        from scipy import sparse

        indices: list[int] = []
        indptr = [0]
        get = vocabulary.get
        for tokens in docs:
            indices += [i for i in map(get, self(tokens)) if i is not None]
            indptr.append(len(indices))
        X = sparse.csr_matrix(
            (np.ones(len(indices), dtype=np.int64), np.asarray(indices, dtype=np.int64), indptr),
            shape=(len(docs), len(vocabulary)),
        )
        X.sum_duplicates()
        return X


@register_evaluator("lightgbm")
class LGBMFeedbackEvaluator:
    """TF-IDF n-grams + text features (+ stacked evaluators' scores) -> LightGBM -> P(good).

    The n-grams are taken from the end of the dialogue before the answer (what was
    asked: it decides whether a long, compliant answer is good or bad), the surface
    features from the answer and its relation to the request. On the sample
    HH-RLHF pairs, n-grams of the answer itself only added noise (lower held-out AUC).
    """

    TFIDF = {
        "word": dict(ngram_range=(1, 2), min_df=5, max_features=2000, sublinear_tf=True),
        "char": dict(
            analyzer="char_wb", ngram_range=(3, 5), min_df=5, max_features=1000, sublinear_tf=True
        ),
    }
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

    def __init__(self, counter, tfidf, booster, feature_names: list[str], *, features, stack):
        self.counter = counter  # CountVectorizer: n-gram vocabulary
        self.tfidf = tfidf  # TfidfTransformer: idf weights, sublinear tf, l2 norm
        self.booster = booster
        self.feature_names = feature_names
        self.features_kind = features
        self.stack = stack  # [(name, evaluator)]
        self.num_threads = 1

    @classmethod
    def _tfidf_parts(cls, features: str, params: dict | None = None, vocabulary=None, idf=None):
        """The CountVectorizer and TfidfTransformer of ``features`` (TfidfVectorizer in two
        parts, so that scoring can count word n-grams itself)."""
        from sklearn.feature_extraction.text import CountVectorizer, TfidfTransformer

        params = dict(cls.TFIDF[features] if params is None else params)
        params["ngram_range"] = tuple(params["ngram_range"])
        sublinear = params.pop("sublinear_tf")
        if features == "word":
            # Words come segmented and lower-cased (text_features_and_window).
            params["analyzer"] = WordNgrams(params.pop("ngram_range"))
        counter = CountVectorizer(vocabulary=vocabulary, **params)
        tfidf = TfidfTransformer(sublinear_tf=sublinear)
        if idf is not None:
            tfidf.idf_ = np.asarray(idf, dtype=np.float64)
        return counter, tfidf

    def _tfidf_matrix(self, docs: list):
        if self.features_kind == "word":
            counts = self.counter.analyzer.count_matrix(docs, self.counter.vocabulary_)
        else:
            counts = self.counter.transform(docs)
        return self.tfidf.transform(counts)

    @staticmethod
    def context_window(text: str) -> str:
        """The end of the dialogue before the answer (the TF-IDF text)."""
        return split_dialogue(text)[0][-CONTEXT_CHARS:]

    def _featurize(self, texts: list[str]) -> tuple[np.ndarray, list]:
        """Text features (dense) and the TF-IDF documents (window words or window text)."""
        rows, docs = [], []
        word = self.features_kind == "word"
        for t in texts:
            feats, window, tokens = text_features_and_window("" if t is None else str(t))
            rows.append(feats)
            docs.append(tokens if word else window)
        return np.asarray(rows, dtype=np.float64).reshape(len(texts), len(TEXT_FEATURES)), docs

    @staticmethod
    def _assemble(dense: np.ndarray, stacked: np.ndarray, tfidf):
        from scipy import sparse

        return sparse.hstack(
            [sparse.csr_matrix(np.hstack([dense, stacked])), tfidf], format="csr", dtype=np.float64
        )

    def features(self, texts: list[str]):
        """The feature matrix (CSR): text features, stacked evaluators' scores, TF-IDF."""
        texts = list(texts)
        dense, docs = self._featurize(texts)
        tfidf = self._tfidf_matrix(docs)
        return self._assemble(dense, stack_scores(self.stack, texts), tfidf)

    def score(self, texts: list[str]) -> np.ndarray:
        """P(good) of each text, in [0, 1]."""
        if len(texts) == 0:
            return np.zeros(0)
        X = self.features(list(texts))
        return np.asarray(self.booster.predict(X, num_threads=self.num_threads), dtype=np.float64)

    # -- persistence without pickle
    def save(self, folder: Path, *, stack_paths: list[str] | None = None) -> None:
        folder = Path(folder)
        self.booster.save_model(str(folder / "model.txt"))
        params = {
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in self.TFIDF[self.features_kind].items()
        }
        write_json(
            {
                "features": self.features_kind,
                "tokenizer": word_tokenizer_version(),
                "params": params,
                "vocabulary": {k: int(v) for k, v in self.counter.vocabulary_.items()},
                "idf": [float(x) for x in self.tfidf.idf_],
            },
            folder / "tfidf.json",
        )
        write_json(
            {
                "kind": self.kind,
                "features": self.feature_names,
                "tfidf": self.features_kind,
                # Relative to this folder, so the evaluators folder can move as a whole.
                "stack": [
                    {"name": name, "path": p}
                    for (name, _), p in zip(self.stack, stack_paths or [], strict=True)
                ],
            },
            folder / "evaluator.json",
        )

    @classmethod
    def load(cls, folder: str | Path) -> LGBMFeedbackEvaluator:
        import lightgbm as lgb

        folder = Path(folder)
        for name in ("model.txt", "tfidf.json", "evaluator.json"):
            if not (folder / name).is_file():
                raise DataError(f"{folder}: not an evaluator folder ({name} missing)")
        spec = read_json(folder / "tfidf.json")
        kind = spec.get("features", "char")
        counter, tfidf = cls._tfidf_parts(kind, spec["params"], spec["vocabulary"], spec["idf"])
        if counter.vocabulary is not None:
            counter.vocabulary_ = dict(counter.vocabulary)
        booster = lgb.Booster(model_file=str(folder / "model.txt"))
        meta = read_json(folder / "evaluator.json")
        stack = [
            (s["name"], load_evaluator((folder / s["path"]).resolve()))
            for s in meta.get("stack", [])
        ]
        return cls(counter, tfidf, booster, meta["features"], features=kind, stack=stack)

    @classmethod
    def fit(
        cls,
        train,
        *,
        seed: int,
        num_threads: int = 1,
        stack: list[tuple[str, object]] | None = None,
        features: str = "word",
        num_boost_round: int = 200,
    ):
        """Train on a feedback frame (pair_id, text, label): (evaluator, train scores, info)."""
        import lightgbm as lgb

        if features not in cls.TFIDF:
            raise PipelineError(
                f"evaluator option 'features': '{features}' is not one of {', '.join(cls.TFIDF)}"
            )
        texts, labels = train["text"].to_list(), train["label"].to_numpy()
        stack = list(stack or [])
        counter, transformer = cls._tfidf_parts(features)
        ev = cls(counter, transformer, None, [], features=features, stack=stack)
        dense, docs = ev._featurize(texts)
        try:
            tfidf = transformer.fit_transform(counter.fit_transform(docs))
        except ValueError as e:  # every context empty or too rare: no n-gram kept
            raise DataError(
                f"feedback texts give no context n-grams "
                f"(min_df {cls.TFIDF[features]['min_df']}): {e}"
            ) from e
        ev.feature_names = (
            TEXT_FEATURES
            + [f"stack_{n}" for n, _ in stack]
            + [f"ctx_tfidf_{i}" for i in range(len(counter.vocabulary_))]
        )
        X = cls._assemble(dense, stack_scores(stack, texts), tfidf)
        params = dict(cls.LGBM, seed=seed, num_threads=num_threads)
        data = lgb.Dataset(X, label=labels, feature_name=ev.feature_names)
        ev.booster = lgb.train(params, data, num_boost_round)
        train_scores = np.asarray(ev.booster.predict(X, num_threads=num_threads), dtype=np.float64)
        info = {
            "features": features,
            "tokenizer": word_tokenizer_version(),
            "tfidf_features": len(counter.vocabulary_),
            "num_boost_round": num_boost_round,
            "stack": [n for n, _ in stack],
        }
        return ev, train_scores, info

    @staticmethod
    def model_card(metrics: dict, train: str, test: str) -> str:
        if metrics["features"] == "word":
            grams = (
                f"TF-IDF word 1-2-grams ({metrics['tokenizer']}: MeCab with the UniDic-lite "
                "dictionary, so Japanese is segmented into words)"
            )
        else:
            grams = "TF-IDF character 3-5-grams (no tokenizer, any language)"
        stacked = (
            f" and the scores of the stacked evaluators {', '.join(metrics['stack'])} "
            "(computed on the training texts by evaluators that may have seen them: in-sample)"
            if metrics["stack"]
            else ""
        )
        return _card(
            "Feedback evaluator (LightGBM)",
            metrics,
            train,
            test,
            model=f"""- Features: {grams} of the last {CONTEXT_CHARS} characters of the dialogue
  before the answer ({metrics["tfidf_features"]} kept), {len(TEXT_FEATURES)} surface features of
  the answer and its relation to the request ({", ".join(TEXT_FEATURES)}){stacked}.
- LightGBM binary classifier, {metrics["num_boost_round"]} rounds, seed {metrics["seed"]},
  deterministic.
- Files: `model.txt` (LightGBM text model), `tfidf.json` (vocabulary and idf), `evaluator.json`.""",
            limits=LGBM_LIMITS,
        )


LGBM_LIMITS = """- On Japanese model outputs English-trained n-grams rarely match, so scores rest
  on the surface features; compare versions with it, do not read it as an absolute quality."""


def _card(title: str, metrics: dict, train: str, test: str, *, model: str, limits: str) -> str:
    """A model card: data, model, held-out metrics, use and limits."""
    m, t = metrics["test"], metrics["train"]
    return f"""# {title}: {metrics["name"]}

Scores a text with P(good): the probability that a human would prefer it.

## Data
- Training: `{train}`: {t["n_pairs"]} preference pairs ({t["n_texts"]} texts) used.
- Validation: `{test}`: {m["n_pairs"]} held-out pairs ({m["n_texts"]} texts);
  the two texts of a pair are always in the same split.
- Labels: chosen = 1 (good), rejected = 0 (bad), from HH-RLHF-style `{{chosen, rejected}}`
  dialogues.

## Model
{model}

## Validation metrics (held-out pairs)
| metric | value |
|---|---|
| AUC (± standard error) | {m["auc"]:.4f} ± {m["auc_se"]:.4f} |
| accuracy (threshold 0.5) | {m["accuracy"]:.4f} |
| paired accuracy (chosen scored above rejected) | {m["paired_accuracy"]:.4f} |
| ECE (10 bins) | {m["ece"]:.4f} |
| Brier score | {m["brier"]:.4f} |

Training-set AUC {t["auc"]:.4f} (a gap to the held-out AUC shows overfitting).
Held-out scores per text: `test_scores.parquet`. Trained in {metrics["seconds"]:.0f} s.

## Use
`load_evaluator(folder).score(texts)` returns P(good) per text. Score a model's answer in the
layout it learned: `format_dialogue(prompt, answer)` ("Human: ...\\n\\nAssistant: ...", both
stripped).

## Limits
- The labels are English HH-RLHF preferences standing in for product feedback: the evaluator
  learns what separates preferred from rejected *English assistant dialogues*.
{limits}
- Chosen and rejected dialogues share their opening turns, so the signal is weak by design;
  pairwise preference accuracy well below 100% is expected.
- Scores are calibrated only on the feedback distribution (see ECE); expect drift elsewhere.
- Replace the training files with real, in-domain feedback before relying on it.
"""


def load_evaluator(path: str | Path):
    """Load a trained evaluator folder; ``.score(texts)`` returns P(good) per text."""
    folder = Path(path)
    meta_path = folder / "evaluator.json"
    if not meta_path.is_file():
        raise DataError(f"{folder}: not an evaluator folder (evaluator.json missing)")
    kind = read_json(meta_path).get("kind")
    try:
        cls = evaluator_class(kind)
    except PipelineError as e:
        raise DataError(f"{meta_path}: {e}") from e
    return cls.load(folder)


def train_evaluator(
    train: str,
    test: str,
    output: str,
    *,
    kind: str = "lightgbm",
    name: str | None = None,
    stack: list[str] | None = None,
    seed: int = 1234,
    num_threads: int = 1,
    **options,
) -> dict:
    """Train an evaluator on feedback_train, validate on feedback_test, save the folder.

    Args:
        train: feedback_train.parquet (pair_id, text, label).
        test: feedback_test.parquet.
        output: evaluator folder to write (atomically).
        kind: registered evaluator kind (config ``evaluate.evaluators[].type``).
        name: evaluator name (default: the folder name).
        stack: folders of trained evaluators whose scores become features.
        seed: seeds sampling and training.
        num_threads: threads for training and scoring (LightGBM results do not depend
            on it; keep it fixed for identical models across runs).
        **options: the kind's options (see :data:`EVALUATOR_OPTIONS`), e.g.
            ``num_boost_round`` for LightGBM, ``epochs`` for BERT.

    Returns:
        metrics.json content: kind, name, options, ``train`` and ``test`` metrics
        (:func:`classification_metrics`), seconds.
    """
    allowed = EVALUATOR_OPTIONS.get(kind)
    if allowed is None:
        raise PipelineError(
            f"config key 'evaluate.evaluators': type '{kind}' is not trainable "
            f"(trainable: {', '.join(EVALUATOR_OPTIONS)})"
        )
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise PipelineError(f"evaluator type '{kind}' has no option(s) {', '.join(unknown)}")
    cls = evaluator_class(kind)
    name = name or Path(output).name
    t0 = time.perf_counter()
    tr, te = read_feedback(train), read_feedback(test)
    overlap = set(tr["pair_id"].to_list()) & set(te["pair_id"].to_list())
    if overlap:
        raise DataError(f"{train} and {test} share pair_id(s), e.g. {sorted(overlap)[:3]}")
    stack_folders = [str(s) for s in stack or []]
    stacked = load_stack(stack_folders)
    ev, train_scores, info = cls.fit(
        tr, seed=seed, num_threads=num_threads, stack=stacked, **options
    )
    used = info.pop("train_frame", tr)
    ev.num_threads = num_threads
    test_scores = ev.score(te["text"].to_list())
    metrics = {
        "kind": kind,
        "name": name,
        "seed": seed,
        **info,
        "train": classification_metrics(
            used["pair_id"].to_numpy(), used["label"].to_numpy(), train_scores
        ),
        "test": classification_metrics(
            te["pair_id"].to_numpy(), te["label"].to_numpy(), test_scores
        ),
    }
    metrics["seconds"] = time.perf_counter() - t0
    import polars as pl

    with atomic_path(output, directory=True) as tmp:
        rel = [os.path.relpath(Path(f).resolve(), Path(output).resolve()) for f in stack_folders]
        ev.save(tmp, stack_paths=rel)
        write_parquet(
            te.select("pair_id", "label").with_columns(pl.Series("score", test_scores)),
            tmp / "test_scores.parquet",
        )
        write_json(metrics, tmp / "metrics.json")
        write_text(cls.model_card(metrics, train, test), tmp / "model_card.md")
    log.info("evaluator %s test metrics: %s", name, json.dumps(metrics["test"]))
    return metrics
