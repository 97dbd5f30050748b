"""Corpus cleaning, deduplication and tokenisation throughput against datatrove, one core each.

Input: the synthetic mixed Japanese/English corpus of ``bench/synth_corpus.py``
(recombined sentences of the real samples, with planted exact and near
duplicates at known rates), one JSONL.gz file. Both sides start from that file
and end with token shards, each in its own subprocess limited to one thread
(``OMP/POLARS/RAYON_NUM_THREADS=1``) and pinned to one CPU:

* ours: ``domainllm.corpus.ingest.ingest_corpus`` (jsonl reader) ->
  ``domainllm.corpus.clean.clean_corpus`` (NFKC + whitespace normalisation, the
  Gopher/C4-style filters, exact dedup, MinHash dedup: 128 permutations,
  character 5-grams, threshold 0.8 with the default bands, or ``--threshold``
  and ``--bands``) -> ``domainllm.corpus.shards.write_shards``.
  ``clean_corpus`` also runs once with ``dedup="none"`` to split filter time
  from dedup time and to know which documents the filters dropped.
* datatrove: ``JsonlReader`` -> an NFKC formatter -> ``GopherRepetitionFilter``
  + ``GopherQualityFilter`` + ``C4QualityFilter`` -> ``JsonlWriter``; its
  exact-dedup stages (signature, find, filter); its four MinHash stages with 16
  buckets x 8 hashes (128 permutations) over character 5-grams; then its
  ``DocumentTokenizer`` with the same tokenizer.json. datatrove's word
  tokenizers need NLTK punkt / spaCy data that this offline machine lacks, and
  none splits Japanese, so the filters get a script-aware tokenizer (a CJK
  character or a ``\\w+`` run is a word, the unit our filters use) and MinHash a
  character tokenizer (so its shingles are character 5-grams, like ours).
  Filter thresholds that cannot apply to character "words" (average word
  length, stop words) are switched off.

The filters are not the same rules, so each side's filter drops are reported and
duplicates are scored on each side's own filter survivors against the planted
truth: in every planted group (an original and its copies) the first survivor
should stay and the other survivors should go ("expected"); "found" counts
those removed, "missed" those kept, "extra" removed documents outside that set.

Reported: documents per second per core (documents / CPU seconds of the
stage, and per wall second), per stage and end to end, the ratio ours /
datatrove, and duplicates planted vs found.

Usage:
    python bench/bench_corpus.py [--docs 50000] [--work /tmp/bench/corpus]
        [--out bench/results/corpus.json] [--cpu 1] [--skip-datatrove]
        [--threshold 0.8] [--bands 16]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

ONE_THREAD = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "POLARS_MAX_THREADS": "1",
    "RAYON_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


class Timer:
    """Wall and CPU seconds (the whole process, all threads) of named stages."""

    def __init__(self):
        self.stages: dict[str, dict] = {}

    def __call__(self, name: str):
        timer = self

        class _T:
            def __enter__(self):
                self.w, self.c = time.perf_counter(), time.process_time()

            def __exit__(self, *exc):
                timer.stages[name] = {
                    "wall_s": round(time.perf_counter() - self.w, 3),
                    "cpu_s": round(time.process_time() - self.c, 3),
                }

        return _T()


def build_tokenizer(folder: Path, vocab_size: int = 8000) -> Path:
    """The pipeline's byte-level BPE tokenizer (models.build), trained on the sample sentences."""
    from synth_corpus import sentence_pools

    from domainllm.models.build import train_tokenizer

    if (folder / "tokenizer.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    ja, en = sentence_pools()
    train_tokenizer(ja + en, vocab_size).save_pretrained(folder)
    return folder


def _ids_parquet(path: Path) -> set[str]:
    import polars as pl

    return set(pl.read_parquet(path, columns=["id"])["id"].to_list())


def run_ours(corpus: Path, tokenizer: Path, work: Path, minhash: dict) -> dict:
    from domainllm.corpus.clean import clean_corpus
    from domainllm.corpus.ingest import ingest_corpus
    from domainllm.corpus.shards import write_shards

    work.mkdir(parents=True, exist_ok=True)
    t = Timer()
    source = {"name": "synth", "format": "jsonl", "path": str(corpus), "lang": "other"}
    source["id_field"] = "id"
    docs = work / "docs.parquet"
    with t("ingest"):
        ingest_corpus([source], str(docs), str(work / "docs_stats.json"))
    with t("clean_filters_only"):
        clean_corpus(
            str(docs), str(work / "filtered.parquet"), str(work / "filtered.json"), dedup="none"
        )
    with t("clean_filters_exact_minhash"):
        clean_corpus(
            str(docs),
            str(work / "clean.parquet"),
            str(work / "clean.json"),
            dedup="near",
            minhash={"num_perm": 128, "ngram": 5, **minhash},
        )
    with t("tokenise"):
        manifest = write_shards(
            str(work / "clean.parquet"),
            str(tokenizer),
            str(work / "shards"),
            tokens_per_shard=10_000_000,
            validation_fraction=0.0,
        )
    stats = json.loads((work / "clean.json").read_text())
    strip = lambda ids: {i.split("/", 1)[1] for i in ids}  # noqa: E731  "synth/d12" -> "d12"
    return {
        "stages": t.stages,
        "filter_survivors": strip(_ids_parquet(work / "filtered.parquet")),
        "final": strip(_ids_parquet(work / "clean.parquet")),
        "exact_removed": stats["dropped"]["duplicate"],
        "near_removed": stats["dropped"]["near_duplicate"],
        "filter_drops": {
            k: v
            for k, v in json.loads((work / "filtered.json").read_text())["dropped"].items()
            if v
        },
        "tokens": manifest["splits"]["train"]["total_tokens"]
        + manifest["splits"]["validation"]["total_tokens"],
    }


def _datatrove_tokenizers():
    from datatrove.utils.word_tokenizers import WordTokenizer

    word = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f]|\w+")
    sent = re.compile(r"[^.!?。！？\n]+[.!?。！？]*")

    class ScriptTokenizer(WordTokenizer):
        """A CJK character or a \\w+ run is a word (our filters' unit for ja / en)."""

        def word_tokenize(self, text):
            return word.findall(text)

        def sent_tokenize(self, text):
            return [m.group().strip() for m in sent.finditer(text) if m.group().strip()]

        def span_tokenize(self, text):
            return [m.span() for m in sent.finditer(text)]

    class CharTokenizer(ScriptTokenizer):
        """Characters as words: MinHash shingles become character n-grams."""

        def word_tokenize(self, text):
            return list(text)

    return ScriptTokenizer(), CharTokenizer()


def _ids_jsonl(folder: Path) -> set[str]:
    ids = set()
    for f in sorted(folder.glob("*.jsonl.gz")):
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            ids.update(json.loads(line)["id"] for line in fh)
    return ids


def run_datatrove(corpus: Path, tokenizer: Path, work: Path, minhash: dict) -> dict:
    import logging
    import unicodedata

    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import MinhashDedupSignature
    from datatrove.pipeline.dedup.exact_dedup import (
        ExactDedupConfig,
        ExactDedupFilter,
        ExactDedupSignature,
        ExactFindDedups,
    )
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
    )
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )
    from datatrove.pipeline.formatters.base import BaseFormatter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.tokens import DocumentTokenizer
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    logging.getLogger("datatrove").setLevel(logging.WARNING)

    class NFKC(BaseFormatter):
        name = "NFKC"

        def format(self, text: str) -> str:
            return unicodedata.normalize("NFKC", text)

    # xxhash >= 4 refuses str, which datatrove 0.10 passes (shingles, text): encode as
    # UTF-8, which is what older xxhash releases did internally.
    import datatrove.utils.hashes.xxhash as dt_xxhash
    import xxhash

    dt_xxhash.xxhash64 = lambda d: xxhash.xxh64_intdigest(d.encode() if isinstance(d, str) else d)
    dt_xxhash.xxhash32 = lambda d: xxhash.xxh32_intdigest(d.encode() if isinstance(d, str) else d)

    script_tok, char_tok = _datatrove_tokenizers()
    work.mkdir(parents=True, exist_ok=True)
    t = Timer()

    def run(name, pipeline, tasks=1):
        with t(name):  # tasks run one after the other (workers=1), in this process
            LocalPipelineExecutor(
                pipeline=pipeline, tasks=tasks, workers=1, logging_dir=str(work / "logs" / name)
            ).run()

    def reader(folder, pattern):
        return JsonlReader(str(folder), glob_pattern=pattern, id_key="id")

    run(
        "filters",
        [
            reader(corpus.parent, corpus.name),
            NFKC(),
            GopherRepetitionFilter(language=script_tok),
            GopherQualityFilter(
                language=script_tok,
                min_doc_words=20,
                min_avg_word_length=None,
                max_avg_word_length=None,
                min_stop_words=None,
                max_non_alpha_words_ratio=None,
            ),
            C4QualityFilter(
                language=script_tok,
                filter_no_terminal_punct=False,
                min_num_sentences=-1,
                min_words_per_line=-1,
                filter_policy=False,
            ),
            JsonlWriter(str(work / "filtered"), output_filename="${rank}.jsonl.gz"),
        ],
    )

    def text_of(doc) -> str:
        return doc.text

    text_of.__annotations__ = {"doc": object, "return": str}  # datatrove inspects the type

    exact_cfg = ExactDedupConfig(content_getter=text_of, hash_config=HashConfig(precision=64))
    run(
        "exact_dedup",
        [
            reader(work / "filtered", "*.jsonl.gz"),
            ExactDedupSignature(str(work / "exact_sigs"), config=exact_cfg),
        ],
    )
    with t("exact_dedup_find"):
        LocalPipelineExecutor(
            pipeline=[
                ExactFindDedups(
                    str(work / "exact_sigs"), str(work / "exact_dups"), config=exact_cfg
                )
            ],
            tasks=1,
            workers=1,
            logging_dir=str(work / "logs/ef"),
        ).run()
    run(
        "exact_dedup_filter",
        [
            reader(work / "filtered", "*.jsonl.gz"),
            ExactDedupFilter(str(work / "exact_dups"), config=exact_cfg),
            JsonlWriter(str(work / "exact"), output_filename="${rank}.jsonl.gz"),
        ],
    )
    mh = MinhashConfig(
        n_grams=5, num_buckets=16, hashes_per_bucket=8, seed=1, hash_config=HashConfig(precision=64)
    )
    run(
        "minhash_signatures",
        [
            reader(work / "exact", "*.jsonl.gz"),
            MinhashDedupSignature(str(work / "mh_sigs"), config=mh, language=char_tok),
        ],
    )
    run(
        "minhash_buckets",
        [MinhashDedupBuckets(str(work / "mh_sigs"), str(work / "mh_buckets"), config=mh)],
        tasks=mh.num_buckets,
    )
    run(
        "minhash_cluster",
        [MinhashDedupCluster(str(work / "mh_buckets"), str(work / "mh_ids"), config=mh)],
    )
    run(
        "minhash_filter",
        [
            reader(work / "exact", "*.jsonl.gz"),
            MinhashDedupFilter(str(work / "mh_ids")),
            JsonlWriter(str(work / "near"), output_filename="${rank}.jsonl.gz"),
        ],
    )
    run(
        "tokenise",
        [
            reader(work / "near", "*.jsonl.gz"),
            DocumentTokenizer(
                str(work / "tokens"),
                tokenizer_name_or_path=str(tokenizer / "tokenizer.json"),
                eos_token="</s>",
                shuffle_documents=False,
            ),
        ],
    )
    filtered, exact, near = (_ids_jsonl(work / d) for d in ("filtered", "exact", "near"))
    tokens = sum(f.stat().st_size for f in (work / "tokens").rglob("*.ds")) // 2
    return {
        "stages": t.stages,
        "filter_survivors": filtered,
        "final": near,
        "exact_removed": len(filtered) - len(exact),
        "near_removed": len(exact) - len(near),
        "tokens": tokens,
    }


def _child(
    side: str, corpus: Path, tokenizer: Path, work: Path, cpu: int | None, minhash: dict
) -> None:
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
    fn = run_ours if side == "ours" else run_datatrove
    res = fn(corpus, tokenizer, work / side, minhash)
    for key in ("filter_survivors", "final"):
        res[key] = sorted(res[key])
    print("@@RESULT@@" + json.dumps(res))


def run_side(
    side: str, corpus: Path, tokenizer: Path, work: Path, cpu: int | None, minhash: dict
) -> dict:
    import shutil

    shutil.rmtree(work / side, ignore_errors=True)
    cmd = [
        sys.executable,
        __file__,
        "--child",
        side,
        "--corpus",
        str(corpus),
        "--tokenizer",
        str(tokenizer),
        "--work",
        str(work),
    ]
    if cpu is not None:
        cmd += ["--cpu", str(cpu)]
    cmd += ["--threshold", str(minhash["threshold"])]
    if minhash["bands"] is not None:
        cmd += ["--bands", str(minhash["bands"])]
    proc = subprocess.run(cmd, env={**os.environ, **ONE_THREAD}, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-5000:])
        raise SystemExit(f"{side} failed (exit {proc.returncode})")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("@@RESULT@@"))
    return json.loads(line[len("@@RESULT@@") :])


def score(res: dict, planted: dict[str, list], n_docs: int) -> dict:
    """Duplicates found among the filter survivors vs the planted ones."""
    survivors, final = set(res["filter_survivors"]), set(res["final"])
    removed = survivors - final
    groups: dict[str, list[int]] = {}
    for doc, (_role, root) in planted.items():
        groups.setdefault(root, [int(root[1:])]).append(int(doc[1:]))
    expected = set()
    for members in groups.values():
        alive = sorted(m for m in members if f"d{m}" in survivors)
        expected.update(f"d{m}" for m in alive[1:])
    stages = res["stages"]
    total_cpu = sum(s["cpu_s"] for k, s in stages.items() if k != "clean_filters_only")
    total_wall = sum(s["wall_s"] for k, s in stages.items() if k != "clean_filters_only")
    return {
        "filter_dropped": n_docs - len(survivors),
        "filter_drops": res.get("filter_drops"),
        "planted_copies": len(planted),
        "expected_removed": len(expected),
        "exact_removed": res["exact_removed"],
        "near_removed": res["near_removed"],
        "dup_removed": len(removed),
        "found": len(removed & expected),
        "missed": len(expected - removed),
        "extra": len(removed - expected),
        "kept": len(final),
        "tokens": res["tokens"],
        "stages": stages,
        "end_to_end_cpu_s": round(total_cpu, 2),
        "end_to_end_wall_s": round(total_wall, 2),
        "docs_per_cpu_s": round(n_docs / total_cpu, 1),
        "docs_per_wall_s": round(n_docs / total_wall, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=50_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench/corpus"))
    ap.add_argument("--out", type=Path, default=REPO / "bench/results/corpus.json")
    ap.add_argument("--cpu", type=int, default=None, help="pin each side to this CPU")
    ap.add_argument("--skip-datatrove", action="store_true")
    ap.add_argument("--threshold", type=float, default=0.8, help="ours: minhash.threshold")
    ap.add_argument("--bands", type=int, default=None, help="ours: minhash.bands (default: auto)")
    ap.add_argument("--child", choices=["ours", "datatrove"], help=argparse.SUPPRESS)
    ap.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--tokenizer", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    minhash = {"threshold": args.threshold, "bands": args.bands}
    if args.child:
        _child(args.child, args.corpus, args.tokenizer, args.work, args.cpu, minhash)
        return

    from synth_corpus import write_corpus

    corpus = args.work / f"corpus_{args.docs}_{args.seed}.jsonl.gz"
    if not Path(str(corpus) + ".truth.json").exists():
        write_corpus(args.docs, corpus, seed=args.seed)
    truth = json.loads(Path(str(corpus) + ".truth.json").read_text())
    planted = truth["planted"]
    tokenizer = build_tokenizer(args.work / "tokenizer")
    report: dict = {
        "corpus": truth["meta"],
        "threads_per_side": 1,
        "cpu": args.cpu,
        "ours_minhash": minhash,
    }
    sides = ["ours"] if args.skip_datatrove else ["ours", "datatrove"]
    for side in sides:
        print(f"running {side} ...", file=sys.stderr, flush=True)
        report[side] = score(
            run_side(side, corpus, tokenizer, args.work, args.cpu, minhash), planted, args.docs
        )
        print(
            json.dumps({side: {k: v for k, v in report[side].items() if k != "stages"}}),
            file=sys.stderr,
            flush=True,
        )
    if "datatrove" in report:
        o, d = report["ours"], report["datatrove"]
        report["ratio_docs_per_cpu_s"] = round(o["docs_per_cpu_s"] / d["docs_per_cpu_s"], 2)
        report["ratio_docs_per_wall_s"] = round(o["docs_per_wall_s"] / d["docs_per_wall_s"], 2)
    print(json.dumps(report, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
