"""Cosine ranking of document embeddings against the seeds, against the machine's memory bandwidth.

Scores N x D float32 unit vectors (default 1M x 384, 1.5 GB) with the package's
``domainllm.corpus.select.similarity_scores`` in the blocks ``select_domain``
uses (``block_rows`` rows per matrix product, default 8192): ``centroid``
(cosine to the mean seed) and ``topk_mean`` (mean cosine to the 5 nearest of
100 seeds). The rate is the bytes of the document matrix read per second;
the peer is the machine's measured memory bandwidth, a numpy copy of a large
array (read + write bytes per second, best of 3). ``topk_mean`` needs
2 x seeds flops per 4 bytes read, so it is bound by compute, not memory; its
second peer is the bare matrix product over the same blocks (BLAS sgemm, no
top-k), whose time is the floor for any exact top-k score. Threads: whatever BLAS and
numpy use by default (set OMP_NUM_THREADS to change); the copy is single-threaded.

Usage:
    python bench/bench_cosine.py [--docs 1000000] [--dim 384] [--seeds 100]
        [--out bench/results/cosine.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def memory_bandwidth(n_bytes: int = 1 << 30, repeats: int = 3) -> float:
    """GB/s of ``np.copyto`` between two arrays of ``n_bytes`` (read + write counted)."""
    src = np.ones(n_bytes // 8, dtype=np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * n_bytes / best / 1e9


def score_all(docs: np.ndarray, seeds: np.ndarray, score: str, block: int) -> np.ndarray:
    from domainllm.corpus.select import similarity_scores

    return np.concatenate(
        [
            similarity_scores(docs[i : i + block], seeds, score=score, topk=5)
            for i in range(0, docs.shape[0], block)
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--block-rows", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "bench/results/cosine.json")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    docs = np.empty((args.docs, args.dim), dtype=np.float32)
    for i in range(0, args.docs, 65536):  # generated in blocks: no float64 copy of the whole
        x = rng.standard_normal((min(65536, args.docs - i), args.dim), dtype=np.float32)
        docs[i : i + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    seeds = rng.standard_normal((args.seeds, args.dim), dtype=np.float32)
    seeds /= np.linalg.norm(seeds, axis=1, keepdims=True)

    bw = memory_bandwidth()
    gb = docs.nbytes / 1e9
    report = {
        "docs": args.docs,
        "dim": args.dim,
        "seeds": args.seeds,
        "block_rows": args.block_rows,
        "matrix_gb": round(gb, 3),
        "cpus": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "memory_bandwidth_gb_s": round(bw, 2),
    }
    for score in ("centroid", "topk_mean"):
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            s = score_all(docs, seeds, score, args.block_rows)
            best = min(best, time.perf_counter() - t0)
        assert s.shape == (args.docs,) and np.isfinite(s).all()
        rate = gb / best
        report[score] = {
            "seconds": round(best, 3),
            "gb_s": round(rate, 2),
            "docs_per_s": round(args.docs / best),
            "share_of_bandwidth": round(rate / bw, 3),
        }
    # The compute floor of topk_mean: the same matrix products, nothing else.
    seeds_t = np.ascontiguousarray(seeds.T)
    sims = np.empty((2048, args.seeds), dtype=np.float32)
    best = float("inf")
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for i in range(0, args.docs, 2048):
            block = docs[i : i + 2048]
            np.matmul(block, seeds_t, out=sims[: len(block)])
        best = min(best, time.perf_counter() - t0)
    flops = 2.0 * args.docs * args.dim * args.seeds
    report["matmul_only"] = {
        "seconds": round(best, 3),
        "gflop_s": round(flops / best / 1e9, 1),
        "gb_s": round(gb / best, 2),
    }
    report["topk_mean"]["gflop_s"] = round(flops / report["topk_mean"]["seconds"] / 1e9, 1)
    report["topk_mean"]["share_of_matmul_only"] = round(best / report["topk_mean"]["seconds"], 3)
    print(json.dumps(report, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
