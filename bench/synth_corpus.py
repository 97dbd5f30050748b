"""A deterministic synthetic corpus for the corpus benchmarks, from the real sample texts.

Sentences come from the shipped samples: Japanese from chABSA (securities reports),
the stockmark NER Wikipedia sentences and the ELYZA-tasks-100 answers; English
from the HH-RLHF dialogues and the Self-Instruct seed tasks. A document is a
random recombination of 6-14 sentences of one language (about 60 % Japanese),
a few sentences per line. Planted duplicates, at known rates, copy an earlier
*original* document:

* exact: the same text, byte for byte;
* near: a lightly edited copy (3-6 single-character substitutions, deletions or
  insertions), whose character 5-gram Jaccard similarity to the original stays
  well above 0.8.

The truth (``role`` = original / exact / near, ``dup_of``) is written next to
the documents so that benchmarks can score what a deduplicator found.

Usage:
    python bench/synth_corpus.py --docs 200000 --out /tmp/bench/corpus.jsonl.gz
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data" / "samples"

_JA_SPLIT = re.compile(r"(?<=[。！？])")
_EN_SPLIT = re.compile(r"(?<=[.!?])\s+")
_SPEAKER = re.compile(r"^(Human|Assistant):\s*")


def _jsonl(path: Path):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def _keep(s: str, lo: int, hi: int) -> bool:
    return lo <= len(s) <= hi and "\n" not in s


def sentence_pools() -> tuple[list[str], list[str]]:
    """(Japanese, English) sentences of the real samples, deduplicated, in a fixed order."""
    ja: list[str] = []
    for doc in _jsonl(SAMPLES / "chabsa" / "chabsa_all.jsonl"):
        ja += [s["sentence"].strip() for s in doc["sentences"]]
    ner = json.loads((SAMPLES / "stockmark_ner_wikipedia" / "ner.json").read_text("utf-8"))
    ja += [r["text"].strip() for r in ner]
    for item in _jsonl(SAMPLES / "elyza_tasks_100" / "elyza_tasks_100.jsonl"):
        for field in ("input", "output"):
            for para in item[field].split("\n"):
                ja += [s.strip() for s in _JA_SPLIT.split(para)]
    en: list[str] = []
    for name in ("helpful-base_test.jsonl.gz", "harmless-base_test.jsonl.gz"):
        for rec in _jsonl(SAMPLES / "hh_rlhf" / name):
            for turn in rec["chosen"].split("\n\n"):
                turn = _SPEAKER.sub("", turn.strip())
                en += [s.strip() for s in _EN_SPLIT.split(turn)]
    for task in _jsonl(SAMPLES / "self_instruct_en" / "seed_tasks.jsonl"):
        texts = [task["instruction"]] + [i["output"] for i in task["instances"]]
        for t in texts:
            for para in t.split("\n"):
                en += [s.strip() for s in _EN_SPLIT.split(para)]
    ja = list(dict.fromkeys(s for s in ja if _keep(s, 12, 300)))
    en = list(dict.fromkeys(s for s in en if _keep(s, 30, 400) and s[-1] in ".!?"))
    return ja, en


def _edit(text: str, rng: random.Random) -> str:
    """3-6 single-character edits away from the line breaks (a near duplicate)."""
    chars = list(text)
    for _ in range(rng.randint(3, 6)):
        i = rng.randrange(len(chars))
        if chars[i] == "\n":
            continue
        op = rng.random()
        other = chars[rng.randrange(len(chars))]
        if other == "\n":
            other = "x"
        if op < 0.4:
            chars[i] = other
        elif op < 0.7 and len(chars) > 40:
            del chars[i]
        else:
            chars.insert(i, other)
    return "".join(chars)


def generate(
    n_docs: int,
    *,
    exact_rate: float = 0.05,
    near_rate: float = 0.05,
    ja_share: float = 0.6,
    min_sents: int = 6,
    max_sents: int = 14,
    seed: int = 0,
):
    """Yield ``n_docs`` records ``{id, text, lang, role, dup_of}`` (deterministic in ``seed``)."""
    ja, en = sentence_pools()
    rng = random.Random(seed)
    originals: list[int] = []  # record numbers of original documents
    texts: dict[int, str] = {}
    for i in range(n_docs):
        r = rng.random()
        role = "original"
        if originals and r < exact_rate:
            role = "exact"
        elif originals and r < exact_rate + near_rate:
            role = "near"
        if role == "original":
            lang = "ja" if rng.random() < ja_share else "en"
            pool = ja if lang == "ja" else en
            sents = rng.sample(pool, rng.randint(min_sents, max_sents))
            sep = "" if lang == "ja" else " "
            lines = [sep.join(sents[k : k + 3]) for k in range(0, len(sents), 3)]
            text = "\n".join(lines)
            originals.append(i)
            texts[i] = text
            yield {"id": f"d{i}", "text": text, "lang": lang, "role": role, "dup_of": None}
        else:
            j = originals[rng.randrange(len(originals))]
            src = texts[j]
            text = src if role == "exact" else _edit(src, rng)
            lang = "ja" if re.search(r"[\u3040-\u30ff]", src) else "en"
            yield {"id": f"d{i}", "text": text, "lang": lang, "role": role, "dup_of": f"d{j}"}


def write_corpus(n_docs: int, out: Path, *, seed: int = 0, **kw) -> dict:
    """Write the documents (JSONL.gz: id, text, lang) and ``<out>.truth.json``; return counts."""
    out.parent.mkdir(parents=True, exist_ok=True)
    counts = {"original": 0, "exact": 0, "near": 0, "chars": 0}
    truth: dict[str, str] = {}
    with gzip.open(out, "wt", encoding="utf-8", compresslevel=1) as f:
        for rec in generate(n_docs, seed=seed, **kw):
            counts[rec["role"]] += 1
            counts["chars"] += len(rec["text"])
            if rec["role"] != "original":
                truth[rec["id"]] = [rec["role"], rec["dup_of"]]
            row = {"id": rec["id"], "text": rec["text"], "lang": rec["lang"]}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    meta = {"docs": n_docs, "seed": seed, **counts}
    Path(str(out) + ".truth.json").write_text(json.dumps({"meta": meta, "planted": truth}))
    return meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench/corpus.jsonl.gz"))
    args = ap.parse_args()
    print(json.dumps(write_corpus(args.docs, args.out, seed=args.seed)))


if __name__ == "__main__":
    main()
