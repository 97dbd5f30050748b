"""Peak memory of ingest and clean as the corpus grows.

For each size, a synthetic JSONL.gz (``bench/synth_corpus.py``; short documents
of 2-4 sentences so that the large sizes finish on a small machine) is ingested
with ``domainllm.corpus.ingest.ingest_corpus`` (the streaming jsonl reader) and
cleaned with ``domainllm.corpus.clean.clean_corpus`` (``dedup="near"``, the
default config), each step in a fresh subprocess whose peak resident set size
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) is reported, along with the
baseline of a subprocess that only imports the modules.

Usage:
    python bench/bench_memory.py [--sizes 50000 200000 500000]
        [--work /tmp/bench/memory] [--out bench/results/memory.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

ONE_THREAD = {"OMP_NUM_THREADS": "1", "POLARS_MAX_THREADS": "1", "RAYON_NUM_THREADS": "1"}


def _child(step: str, corpus: Path, work: Path) -> None:
    import resource

    from domainllm.corpus.clean import clean_corpus
    from domainllm.corpus.ingest import ingest_corpus

    t0 = time.perf_counter()
    docs = work / "docs.parquet"
    if step == "ingest":
        source = {"name": "synth", "format": "jsonl", "path": str(corpus), "lang": "other"}
        ingest_corpus([source], str(docs), str(work / "docs_stats.json"))
    elif step == "clean":
        clean_corpus(str(docs), str(work / "clean.parquet"), str(work / "clean.json"), dedup="near")
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(
        json.dumps({"peak_rss_mb": round(rss_mb, 1), "seconds": round(time.perf_counter() - t0, 2)})
    )


def run_step(step: str, corpus: Path, work: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", step, "--corpus", str(corpus), "--work", str(work)]
    proc = subprocess.run(cmd, env={**os.environ, **ONE_THREAD}, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"{step} failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[50_000, 200_000, 500_000])
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench/memory"))
    ap.add_argument("--out", type=Path, default=REPO / "bench/results/memory.json")
    ap.add_argument("--child", choices=["baseline", "ingest", "clean"], help=argparse.SUPPRESS)
    ap.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child, args.corpus, args.work)
        return

    from synth_corpus import write_corpus

    rows = []
    args.work.mkdir(parents=True, exist_ok=True)
    base = run_step("baseline", args.work / "none", args.work)
    for n in args.sizes:
        work = args.work / str(n)
        work.mkdir(parents=True, exist_ok=True)
        corpus = work / "corpus.jsonl.gz"
        meta_file = work / "corpus.meta.json"
        if corpus.exists() and meta_file.exists():  # reuse the corpus of an earlier run
            meta = json.loads(meta_file.read_text())
        else:
            meta = write_corpus(n, corpus, min_sents=2, max_sents=4)
            meta_file.write_text(json.dumps(meta))
        row = {
            "docs": n,
            "chars": meta["chars"],
            "jsonl_gz_mb": round(corpus.stat().st_size / 2**20, 1),
        }
        for step in ("ingest", "clean"):
            res = run_step(step, corpus, work)
            row[f"{step}_peak_rss_mb"] = res["peak_rss_mb"]
            row[f"{step}_seconds"] = res["seconds"]
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    report = {"baseline_peak_rss_mb": base["peak_rss_mb"], "sizes": rows}
    print(json.dumps(report, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
