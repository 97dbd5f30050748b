"""Scoring throughput of the trained evaluators on one core, against a named peer.

Peer: scikit-learn's plain TF-IDF (default word analyzer) + LogisticRegression,
the usual baseline text classifier, trained on the same feedback pairs.

Every evaluator is trained on the shipped HH-RLHF sample pairs (the pipeline's
prepare_feedback split: chosen = good, rejected = bad), then scores the same 10k
texts (drawn with replacement, seeded, from all pairs: full dialogues of 720
characters on average) on one core: the process pinned to one CPU, and
OMP/MKL/torch/LightGBM at one thread. Throughput is texts per CPU-second of the
process (``time.process_time``; robust to other jobs on a shared machine) and per
wall-clock second, best of ``--repeats``. The BERT evaluator scores ``--bert-texts``
of the texts (a transformer on CPU would take many minutes for 10k). Held-out AUC
is reported next to the speed, so the trade is visible.

Usage:
    python bench/bench_evaluators.py [--texts 10000] [--bert-texts 300] [--cpu 1] \
        [--out bench/results/evaluators.json]
    python bench/bench_evaluators.py --texts 2000 --no-bert    # a quick run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "POLARS_MAX_THREADS"):
    os.environ[_var] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HH = [
    REPO / "data/samples/hh_rlhf/helpful-base_test.jsonl.gz",
    REPO / "data/samples/hh_rlhf/harmless-base_test.jsonl.gz",
]
GOAL = 5000  # texts per second on one core (issue 6)


class SklearnPeer:
    """TfidfVectorizer (scikit-learn defaults: word unigrams) + LogisticRegression."""

    def __init__(self, texts, labels, seed):
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        self.vec = TfidfVectorizer(sublinear_tf=True, min_df=2)
        self.clf = LogisticRegression(C=1.0, max_iter=1000, random_state=seed)
        self.clf.fit(self.vec.fit_transform(texts), labels)

    def score(self, texts):
        return self.clf.predict_proba(self.vec.transform(texts))[:, 1]


def timed(fn, texts, repeats: int) -> dict:
    cpu, wall = [], []
    for _ in range(repeats):
        c, w = time.process_time(), time.perf_counter()
        scores = fn(texts)
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    assert len(scores) == len(texts) and np.isfinite(scores).all()
    return {
        "texts": len(texts),
        "cpu_s": min(cpu),
        "wall_s": min(wall),
        "texts_per_cpu_s": len(texts) / min(cpu),
        "texts_per_wall_s": len(texts) / min(wall),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", type=int, default=10_000)
    ap.add_argument("--bert-texts", type=int, default=300)
    ap.add_argument("--no-bert", action="store_true")
    ap.add_argument("--bert-train-pairs", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cpu", type=int, default=None, help="pin to this CPU (default: the last)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    if hasattr(os, "sched_setaffinity"):
        cpu = args.cpu if args.cpu is not None else max(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
    import polars as pl
    import torch

    torch.set_num_threads(1)
    from sklearn.metrics import roc_auc_score

    from domainllm.data.feedback import prepare_feedback
    from domainllm.evaluate.feedback import load_evaluator, train_evaluator

    work = Path(tempfile.mkdtemp(prefix="bench_evaluators_"))
    tr, te = work / "train.parquet", work / "test.parquet"
    prepare_feedback([str(p) for p in HH], str(tr), str(te), max_pairs=10_000, seed=args.seed)
    train, test = pl.read_parquet(tr), pl.read_parquet(te)
    pool = pl.concat([train, test])["text"].to_list()
    rng = np.random.default_rng(args.seed)
    texts = [pool[i] for i in rng.integers(0, len(pool), args.texts)]
    print(
        f"{len(texts)} texts, {np.mean([len(t) for t in texts]):.0f} characters on average; "
        f"{train.height} training texts, {test.height} held out",
        file=sys.stderr,
    )

    rows = []
    specs = [
        ("lightgbm (word)", "lightgbm", {"features": "word", "num_boost_round": 200}),
        ("lightgbm (char)", "lightgbm", {"features": "char", "num_boost_round": 200}),
    ]
    if not args.no_bert:
        bert = {"max_train_pairs": args.bert_train_pairs, "max_len": 256, "epochs": 1}
        specs.append(("bert (MiniLM-L6, 256 tokens)", "bert", bert))
    for label, kind, options in specs:
        folder = work / label.split()[0] / options.get("features", "x")
        t0 = time.perf_counter()
        m = train_evaluator(
            str(tr), str(te), str(folder), kind=kind, seed=args.seed, num_threads=1, **options
        )
        ev = load_evaluator(folder)
        ev.num_threads = 1
        sample = texts[: args.bert_texts] if kind == "bert" else texts
        row = {"evaluator": label, "kind": kind, **timed(ev.score, sample, args.repeats)}
        row.update(heldout_auc=m["test"]["auc"], train_s=time.perf_counter() - t0)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)

    t0 = time.perf_counter()
    peer = SklearnPeer(train["text"].to_list(), train["label"].to_numpy(), args.seed)
    row = {"evaluator": "peer: sklearn TF-IDF + LogisticRegression", "kind": "peer"}
    row.update(timed(peer.score, texts, args.repeats))
    row.update(
        heldout_auc=float(roc_auc_score(test["label"], peer.score(test["text"].to_list()))),
        train_s=time.perf_counter() - t0,
    )
    rows.append(row)

    peer_rate = row["texts_per_cpu_s"]
    print("| evaluator | texts scored | texts / CPU-s | texts / wall-s | vs peer | held-out AUC |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        r["ratio_to_peer"] = r["texts_per_cpu_s"] / peer_rate
        print(
            f"| {r['evaluator']} | {r['texts']:,} | {r['texts_per_cpu_s']:,.0f} | "
            f"{r['texts_per_wall_s']:,.0f} | {r['ratio_to_peer']:.2f} | {r['heldout_auc']:.3f} |"
        )
    lgbm = rows[0]["texts_per_cpu_s"]
    verdict = "met" if lgbm >= GOAL else "NOT met"
    print(f"\nLightGBM (word) goal >= {GOAL:,} texts/s on one core: {verdict}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"goal": GOAL, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
