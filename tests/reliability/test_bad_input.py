"""The bad input catalogue: every kind of bad input the pipeline refuses, and how.

Each case builds real inputs in a fresh work folder, with the outputs of an
"earlier run" already in place, and runs the real entry point in a subprocess:
the ``domainllm`` command, a module entry point (``python -m ...``), Snakemake, or
a rule's own script run as Snakemake runs it (``tests/reliability/_script.py``).
Every case then checks the same four things:

1. a clear message: an ``error: <message>`` line on stderr (and in the job's log),
   no traceback, naming the file (and line) or the config key;
2. a non-zero exit (1);
3. no partial or corrupt output: no file appears anywhere in the work folder
   (temporary files included), except the job's log;
4. nothing already built lost: every file that was there before is byte for byte
   the same (earlier outputs of the same paths, inputs, checkpoints).

``docs/reliability.md`` lists the cases with what the user gets; its ids are the
ids of ``test_bad_input_is_refused``.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import lzma
import os
import pickle
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from tests.conftest import REPO, SAMPLES

PY = sys.executable
DOMAINLLM = str(Path(sys.executable).with_name("domainllm"))
HARNESS = str(Path(__file__).with_name("_script.py"))
ELYZA = SAMPLES / "elyza_tasks_100" / "elyza_tasks_100.jsonl"
NER = SAMPLES / "stockmark_ner_wikipedia" / "ner.json"
JA_DUMP = SAMPLES / "wiki_dumps" / "wp2txt_testdata_ja.xml.bz2"
HH = SAMPLES / "hh_rlhf" / "helpful-base_test.jsonl.gz"
PRODUCT_LOG = SAMPLES / "product_log" / "hh_rlhf_single_turn.jsonl"
TEST_CONFIG = yaml.safe_load((REPO / "config" / "test.yaml").read_text(encoding="utf-8"))
# What the work folder may gain in a failed run: the job's log, Snakemake's own state.
IGNORED = ("logs/", ".snakemake/")


# ---------------------------------------------------------------- the work folder


@dataclass
class Run:
    """How to run a case: the command, and the job log that must hold the message too."""

    argv: list[str]
    cwd: Path
    log: Path | None = None
    snakemake: bool = False  # Snakemake prints the message its own way (no "error:" line)


@dataclass
class Work:
    """A case's work folder and the helpers that fill it."""

    root: Path
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def path(self, rel: str) -> Path:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def write(self, rel: str, content: str | bytes) -> Path:
        p = self.path(rel)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content, encoding="utf-8")
        return p

    def old(self, rel: str) -> str:
        """An output of an earlier run at ``rel`` (a folder when ``rel`` ends with "/")."""
        if rel.endswith("/"):
            self.write(rel + "model.safetensors", f"earlier {rel}\n".encode())
            return str(self.root / rel.rstrip("/"))
        return str(self.write(rel, f"earlier {rel}\n".encode()))

    def script(self, rule: str, **spec) -> Run:
        """Run ``scripts/<rule>.py`` as Snakemake's ``script:`` directive does."""
        log = self.root / "logs" / f"{rule}.log"
        spec = {"threads": 1, **spec, "log": [str(log)]}
        path = self.write(f"specs/{rule}.json", json.dumps(spec, indent=1))
        return Run([PY, HARNESS, rule, str(path)], self.root, log)

    def cli(self, *args: str) -> Run:
        return Run([DOMAINLLM, *args], self.root)

    def module(self, module: str, *args: str, log: Path | None = None) -> Run:
        return Run([PY, "-m", module, *args], self.root, log)

    def server(self, reply: dict) -> str:
        """An OpenAI-compatible server on loopback answering every POST with ``reply``."""

        class Handler(BaseHTTPRequestHandler):
            def _send(self, obj: dict) -> None:
                data = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802 - http.server's name
                self._send({"data": [{"id": "judge", "max_model_len": 512}]})

            def do_POST(self):  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self._send(reply)

            def log_message(self, *args):
                pass

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()

        def stop():
            httpd.shutdown()
            httpd.server_close()

        self.cleanups.append(stop)
        return f"http://127.0.0.1:{httpd.server_address[1]}/v1"

    def tmpfs(self, rel: str, size: str) -> Path:
        """A small tmpfs mounted at ``rel`` (a real full disk); skip where mounting is refused."""
        p = self.root / rel
        p.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(p)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            pytest.skip(
                f"cannot mount a tmpfs here ({proc.stderr.strip()[:100]}): "
                "disk-full-writer covers a full disk with a failing writer"
            )
        self.cleanups.append(lambda: subprocess.run(["umount", str(p)], check=True))
        return p

    def close(self) -> None:
        for fn in reversed(self.cleanups):
            fn()


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` but the logs and Snakemake's state."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not rel.startswith(IGNORED) and "__pycache__" not in rel:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# ---------------------------------------------------------------- the catalogue


@dataclass
class Case:
    id: str
    area: str
    expect: str  # regular expression the error message must match
    build: Callable[[Work], Run]


CASES: list[Case] = []


def case(id: str, area: str, expect: str):
    def register(build: Callable[[Work], Run]) -> Callable[[Work], Run]:
        CASES.append(Case(id, area, expect, build))
        return build

    return register


# ---- config: `domainllm validate` and Snakemake's parse


def _config(w: Work, change: Callable[[dict], None], name: str = "my.yaml") -> Run:
    cfg = json.loads(json.dumps(TEST_CONFIG))
    change(cfg)
    w.write(name, yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False))
    w.old("results/eval/metrics.json")
    return w.cli("validate", name)


@case("config-unknown-key", "config", r"my\.yaml: invalid configuration:\s+unknown key 'colour'")
def _(w):
    return _config(w, lambda c: c.update(colour="blue"))


@case(
    "config-mistyped-key",
    "config",
    r"unknown key 'cpt\.max_stpes': did you mean 'max_steps'\? \(allowed here: .*max_steps",
)
def _(w):
    return _config(w, lambda c: c["cpt"].update(max_stpes=c["cpt"].pop("max_steps")))


@case(
    "config-mistyped-key-snakemake",
    "config",
    r"unknown key 'sft\.learning_rte': did you mean 'learning_rate'\?",
)
def _(w):
    for name in ("config", "data"):
        (w.root / name).symlink_to(REPO / name)
    cfg = json.loads(json.dumps(TEST_CONFIG))
    cfg["sft"]["learning_rte"] = cfg["sft"].pop("learning_rate")
    w.write("my.yaml", yaml.safe_dump(cfg, allow_unicode=True))
    w.old("results/corpus/docs.parquet")
    argv = [PY, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "-n", "--cores", "1"]
    return Run([*argv, "--configfile", "my.yaml"], w.root, snakemake=True)


@case("config-wrong-type", "config", r"key 'cpt\.max_steps': 'ten' is not of type 'integer'")
def _(w):
    return _config(w, lambda c: c["cpt"].update(max_steps="ten"))


@case("config-zero-value", "config", r"key 'cpt\.max_steps': 0 is less than the minimum of 1")
def _(w):
    return _config(w, lambda c: c["cpt"].update(max_steps=0))


@case(
    "config-negative-value",
    "config",
    r"key 'cpt\.learning_rate': -0\.001 is less than or equal to the minimum of 0",
)
def _(w):
    return _config(w, lambda c: c["cpt"].update(learning_rate=-0.001))


@case(
    "config-bad-enum",
    "config",
    r"key 'corpus\.sources\[0\]\.format': 'xml' is not one of \['mediawiki', 'jsonl'",
)
def _(w):
    return _config(w, lambda c: c["corpus"]["sources"][0].update(format="xml"))


@case(
    "config-threshold-out-of-range",
    "config",
    r"key 'evaluate\.validation\.min_auc': 1\.5 is greater than the maximum of 1",
)
def _(w):
    return _config(w, lambda c: c["evaluate"]["validation"].update(min_auc=1.5))


@case("config-not-a-mapping", "config", r"my\.yaml: the top level must be a mapping, got list")
def _(w):
    w.write("my.yaml", "- seed: 1\n- cpt: {}\n")
    return w.cli("validate", "my.yaml")


@case("config-bad-yaml", "config", r"my\.yaml:4:14: not valid YAML: mapping values")
def _(w):
    w.write("my.yaml", "seed: 1\ncpt:\n  max_steps: 3\n   batch_size: 2\n")
    return w.cli("validate", "my.yaml")


@case("config-bad-json", "config", r"my\.json:3:\d+: not valid YAML: expected the node content")
def _(w):
    w.write("my.json", '{"seed": 1,\n "cpt": {"max_steps": 3,\n  ,"batch_size": 2}}\n')
    return w.cli("validate", "my.json")


@case("config-missing-file", "config", r"nope\.yaml: config file not found")
def _(w):
    w.old("results/eval/metrics.json")
    return w.cli("validate", "nope.yaml")


# ---- corpora: rule ingest_corpus (and clean_corpus, select_domain, the shards)


def _source(path: Path, fmt: str = "jsonl", **extra) -> dict:
    """A corpus.sources entry with the schema's defaults filled, as the workflow passes it."""
    return {
        "name": "web",
        "format": fmt,
        "path": str(path),
        "lang": "ja",
        "text_field": "text",
        "id_field": None,
        "title_field": None,
        "split": None,
        "limit": None,
        "on_error": "error",
        **extra,
    }


def _ingest(w: Work, *sources: dict, fault: str | None = None) -> Run:
    docs = w.old("results/corpus/docs.parquet")
    stats = w.old("results/corpus/docs_stats.json")
    return w.script(
        "ingest_corpus",
        output={"docs": docs, "stats": stats},
        params={"sources": list(sources)},
        fault=fault,
    )


def _ner_lines(n: int) -> list[bytes]:
    items = json.loads(NER.read_text(encoding="utf-8"))[:n]
    return [json.dumps({"text": i["text"]}, ensure_ascii=False).encode() for i in items]


def _jsonl(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\n" for line in lines)


@case(
    "corpus-missing-file",
    "corpus",
    r"raw/none\.jsonl: file not found \(config key corpus\.sources\[0\]\.path\)",
)
def _(w):
    return _ingest(w, _source(w.root / "raw" / "none.jsonl"))


@case(
    "corpus-empty",
    "corpus",
    r"empty\.jsonl: empty source: no records \(config key corpus\.sources\[0\]\.path\)",
)
def _(w):
    return _ingest(w, _source(w.write("raw/empty.jsonl", b"")))


@case("corpus-invalid-utf8", "corpus", r"bad\.jsonl:3: not valid UTF-8 \(byte \d+ of the line")
def _(w):
    lines = _ner_lines(5)
    lines[2] = lines[2][:20] + b"\xff\xfe" + lines[2][20:]
    return _ingest(w, _source(w.write("raw/bad.jsonl", _jsonl(lines))))


@case("corpus-malformed-jsonl", "corpus", r"bad\.jsonl:2: invalid JSON: .*\(column \d+\)")
def _(w):
    lines = _ner_lines(5)
    lines[1] = lines[1].decode()[:-2].encode()  # the closing quote and brace lost
    return _ingest(w, _source(w.write("raw/bad.jsonl", _jsonl(lines))))


@case(
    "corpus-malformed-jsonl-snakemake",
    "corpus",
    r"error: \S*raw/bad\.jsonl:2: invalid JSON: .*\(column \d+\)",
)
def _(w):
    # The same bad line through Snakemake itself: the job fails, Snakemake removes
    # what the job declared, and what other jobs built stays.
    for name in ("config", "data"):
        (w.root / name).symlink_to(REPO / name)
    lines = _ner_lines(5)
    lines[1] = lines[1].decode()[:-2].encode()
    w.write("raw/bad.jsonl", _jsonl(lines))
    w.write("my.yaml", yaml.safe_dump({"corpus": {"sources": [_source(Path("raw/bad.jsonl"))]}}))
    w.old("results/models/tiny-test/cpt/")
    w.old("results/corpus/selected.parquet")
    argv = [PY, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--cores", "1"]
    run = Run(
        [*argv, "results/corpus/docs.parquet", "--configfile", "my.yaml"],
        w.root,
        w.root / "logs" / "ingest_corpus.log",
        snakemake=True,
    )
    return run


@case(
    "corpus-missing-text-field",
    "corpus",
    r"bad\.jsonl:2: no field 'text' \(config key corpus\.sources\[0\]\.text_field\)",
)
def _(w):
    lines = _ner_lines(5)
    lines[1] = lines[1].replace(b'"text"', b'"body"')
    return _ingest(w, _source(w.write("raw/bad.jsonl", _jsonl(lines))))


def _zstd(data: bytes) -> bytes:
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, "zstd") as f:
        f.write(data)
    return sink.getvalue().to_pybytes()


COMPRESSORS = {
    "gz": gzip.compress,
    "bz2": bz2.compress,
    "xz": lzma.compress,
    "zst": _zstd,
}


def _truncated(suffix: str):
    def build(w: Work) -> Run:
        packed = COMPRESSORS[suffix](_jsonl(_ner_lines(3000)))
        cut = w.write(f"raw/cut.jsonl.{suffix}", packed[: len(packed) // 2])
        return _ingest(w, _source(cut))

    return build


for _suffix in COMPRESSORS:
    case(
        f"corpus-truncated-{_suffix}",
        "corpus",
        rf"cut\.jsonl\.{_suffix}:\d+: truncated or corrupt compressed file after line \d+",
    )(_truncated(_suffix))


@case(
    "corpus-dump-no-closing-tag",
    "corpus",
    r"head\.xml: the dump ends before </mediawiki>, inside a page \(XML ends early at line "
    r"\d+.*Set on_error: skip on this source \(config key corpus\.sources\[0\]\.on_error\)",
)
def _(w):
    xml = bz2.decompress(JA_DUMP.read_bytes())
    # The first pages of a real dump, cut inside the next one (an interrupted download).
    cut = xml.index(b"<page>", xml.index(b"</page>") + 1) + 200
    return _ingest(w, _source(w.write("raw/head.xml", xml[:cut]), "mediawiki"))


MINI_PAGE = (
    "<page><title>{title}</title><ns>0</ns><id>{id}</id><revision><id>9</id>"
    "<text>{title}は日本の都市である。人口は多い。</text></revision></page>"
)
MINI_HEAD = '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.11/" version="0.11">\n'


@case(
    "corpus-duplicate-ids",
    "corpus",
    r"dup\.xml: duplicate document id '1' in source web",
)
def _(w):
    pages = [MINI_PAGE.format(title=t, id=i) for t, i in (("東京", 1), ("大阪", 2), ("京都", 1))]
    dump = MINI_HEAD + "\n".join(pages) + "\n</mediawiki>\n"
    return _ingest(w, _source(w.write("raw/dup.xml", dump), "mediawiki"))


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE mediawiki [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;">]>
<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.11/">
  <page><title>Lol</title><ns>0</ns><id>1</id><revision><text>&lol2;</text></revision></page>
</mediawiki>
"""


@case(
    "corpus-dump-with-entities",
    "corpus",
    r"evil\.xml:2: a document type declaration \(DTD\) is not allowed in a MediaWiki dump",
)
def _(w):
    return _ingest(w, _source(w.write("raw/evil.xml", BILLION_LAUGHS), "mediawiki"))


@case("corpus-not-parquet", "corpus", r"web\.parquet: not a readable Parquet file")
def _(w):
    fake = w.write("raw/web.parquet", _jsonl(_ner_lines(3)))  # JSON Lines under a .parquet name
    return _ingest(w, _source(fake, "parquet"))


def _docs_table(n: int) -> pl.DataFrame:
    items = json.loads(NER.read_text(encoding="utf-8"))[:n]
    return pl.DataFrame(
        {
            "id": [f"web/{i}" for i in range(n)],
            "source": ["web"] * n,
            "title": [""] * n,
            "text": [i["text"] for i in items],
            "lang": ["ja"] * n,
        }
    )


@case(
    "corpus-all-filtered",
    "corpus",
    r"docs\.parquet: every document was dropped by cleaning \(40 of 40; per reason: "
    r"\{'too_short': 40\}\); check the config keys corpus\.clean\.\*",
)
def _(w):
    docs = w.path("results/corpus/docs.parquet")
    _docs_table(40).write_parquet(docs)
    return w.script(
        "clean_corpus",
        input={"docs": str(docs)},
        output={
            "clean": w.old("results/corpus/clean.parquet"),
            "stats": w.old("results/corpus/stats.json"),
            "dropped": w.old("results/corpus/dropped_samples.jsonl"),
        },
        params={"clean": {"min_chars": 100_000, "max_chars": 200_000}, "seed": 1234},
    )


@case(
    "selection-keeps-nothing",
    "corpus",
    r"config key 'corpus\.select\.value': the cut \(threshold=0\.99, threshold 0\.9900\) keeps "
    r"no document; scores range -?\d\.\d+\.\.-?\d\.\d+",
)
def _(w):
    rng = np.random.default_rng(0)

    def unit(n: int) -> np.ndarray:
        x = rng.standard_normal((n, 16)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    clean = w.path("results/corpus/clean.parquet")
    table = _docs_table(12)
    table.write_parquet(clean)
    seeds = w.path("results/corpus/seed_embeddings.npy")
    np.save(seeds, unit(5))
    embeddings, ids = [], []
    for part, rows in enumerate((slice(0, 7), slice(7, 12))):
        emb = w.path(f"results/corpus/embeddings/{part}.npy")
        np.save(emb, unit(rows.stop - rows.start))
        idp = w.path(f"results/corpus/embeddings/{part}.ids.parquet")
        table[rows].select("id").write_parquet(idp)
        embeddings.append(str(emb))
        ids.append(str(idp))
    return w.script(
        "select_domain",
        input={
            "clean": str(clean),
            "seeds": str(seeds),
            "embeddings": embeddings,
            "ids": ids,
            "state": str(w.write("results/corpus/embedder.json", "{}")),
        },
        output={
            "selected": w.old("results/corpus/selected.parquet"),
            "report": w.old("results/corpus/selection_report.json"),
            "histogram": w.old("results/corpus/selection_hist.png"),
            "markdown": w.old("results/corpus/selection_report.md"),
        },
        params={"score": "centroid", "topk": 5, "method": "threshold", "value": 0.99},
    )


@case(
    "shards-uint16-large-vocabulary",
    "corpus",
    r"shards/big/manifest\.json: dtype uint16 cannot hold the ids of a 70000-token vocabulary",
)
def _(w):
    # Shards written as uint16 for a tokenizer of 70,000 tokens: ids above 65,535 wrapped.
    shards = w.path("results/shards/big/shard_00000.bin").parent
    tokens = (np.arange(4096) * 17 % 70000).astype(np.uint16)
    tokens.tofile(shards / "shard_00000.bin")
    sha = hashlib.sha256((shards / "shard_00000.bin").read_bytes()).hexdigest()
    manifest = {
        "dtype": "uint16",
        "vocab_size": 70000,
        "eos_id": 2,
        "total_tokens": 4096,
        "total_docs": 1,
        "shards": [{"file": "shard_00000.bin", "tokens": 4096, "docs": 1, "sha256": sha}],
    }
    (shards / "manifest.json").write_text(json.dumps(manifest))
    base = w.old("results/base/big/")
    ckpt = w.old("results/checkpoints/cpt/checkpoint-10/")
    out = w.old("results/models/big/cpt/")
    log = w.root / "logs" / "train_cpt.log"
    return w.module(
        "domainllm.train.cpt",
        *("--base", base, "--shards", str(shards), "--output", out),
        *("--checkpoint-dir", str(Path(ckpt).parent), "--max-steps", "2", "--seq-len", "8"),
        *("--log", str(log)),
        log=log,
    )


def _disk_full_ingest(w: Work, fault: str | None) -> Run:
    return _ingest(w, _source(NER, "json", id_field="curid"), fault=fault)


@case(
    "disk-full-tmpfs",
    "disk",
    r"results/corpus/docs\.parquet: no space left on the device while writing it \(.*\); "
    r"the partial file was removed and any earlier version is untouched",
)
def _(w):
    w.tmpfs("results", "64k")
    return _disk_full_ingest(w, None)


@case(
    "disk-full-writer",
    "disk",
    r"results/corpus/docs\.parquet: no space left on the device while writing it "
    r"\(\[Errno 28\] No space left on device\)",
)
def _(w):
    return _disk_full_ingest(w, "enospc")


@case(
    "disk-full-polars-writer",
    "disk",
    r"feedback_train\.parquet: no space left on the device while writing it \(.*os error 28",
)
def _(w):
    return w.script(
        "prepare_feedback",
        input={"paths": [str(HH)]},
        output={
            "train": w.old("results/data/feedback_train.parquet"),
            "test": w.old("results/data/feedback_test.parquet"),
        },
        params={"max_pairs": 40, "test_fraction": 0.25, "seed": 1234},
        fault="enospc",
    )


# ---- instruction and feedback data


def _elyza_lines(n: int) -> list[bytes]:
    return ELYZA.read_bytes().splitlines()[:n]


def _instructions(w: Work, elyza: Path, sources: list | None = None) -> Run:
    return w.script(
        "prepare_instructions",
        input={"elyza": str(elyza)},
        output={
            "candidates": w.old("results/data/sft_candidates.parquet"),
            "eval_prompts": w.old("results/data/eval_prompts.parquet"),
        },
        params={
            "sources": sources or [],
            "elyza_eval": 3,
            "jsquad_items": 0,
            "seed": 1234,
        },
    )


@case(
    "instructions-missing-answer",
    "instructions",
    r"elyza\.jsonl:4: missing field 'output'",
)
def _(w):
    lines = _elyza_lines(10)
    item = json.loads(lines[3])
    del item["output"]
    lines[3] = json.dumps(item, ensure_ascii=False).encode()
    return _instructions(w, w.write("raw/elyza.jsonl", _jsonl(lines)))


@case(
    "instructions-duplicate-id",
    "instructions",
    r"log\.jsonl:3: id 'a1' repeats line 1",
)
def _(w):
    rows = [json.loads(x) for x in PRODUCT_LOG.read_bytes().splitlines()[:3]]
    for row, id_ in zip(rows, ("a1", "a2", "a1"), strict=True):
        row["id"] = id_
    log = w.write("raw/log.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    elyza = w.write("raw/elyza.jsonl", _jsonl(_elyza_lines(10)))
    return _instructions(w, elyza, [{"name": "logs", "format": "product_log", "path": str(log)}])


@case(
    "instructions-missing-source",
    "instructions",
    r"raw/nope\.jsonl: instruction source 'logs' does not exist",
)
def _(w):
    elyza = w.write("raw/elyza.jsonl", _jsonl(_elyza_lines(10)))
    missing = str(w.root / "raw" / "nope.jsonl")
    return _instructions(w, elyza, [{"name": "logs", "format": "product_log", "path": missing}])


@case(
    "feedback-single-class",
    "feedback",
    r"feedback_train\.parquet: every text has label 1; needs both labels \(good 1 and bad 0\)",
)
def _(w):
    def table(labels):
        n = len(labels)
        return pl.DataFrame(
            {"pair_id": list(range(n)), "text": [f"answer {i}" for i in range(n)], "label": labels}
        )

    train = w.path("results/data/feedback_train.parquet")
    test = w.path("results/data/feedback_test.parquet")
    table([1] * 8).write_parquet(train)
    table([1, 0] * 2).write_parquet(test)
    return w.script(
        "train_evaluator",
        input={"train": str(train), "test": str(test), "stack": []},
        output={"folder": w.old("results/evaluators/feedback-lgbm/")},
        params={"kind": "lightgbm", "seed": 1234, "options": {"num_boost_round": 5}},
        wildcards={"evaluator": "feedback-lgbm"},
    )


@case(
    "feedback-pair-missing-field",
    "feedback",
    r"pairs\.jsonl\.gz:2: expected string fields 'chosen' and 'rejected'",
)
def _(w):
    rows = [json.loads(x) for x in gzip.decompress(HH.read_bytes()).splitlines()[:4]]
    del rows[1]["rejected"]
    data = gzip.compress(_jsonl([json.dumps(r).encode() for r in rows]))
    pairs = w.write("raw/pairs.jsonl.gz", data)
    return w.script(
        "prepare_feedback",
        input={"paths": [str(pairs)]},
        output={
            "train": w.old("results/data/feedback_train.parquet"),
            "test": w.old("results/data/feedback_test.parquet"),
        },
        params={"max_pairs": 40, "test_fraction": 0.25, "seed": 1234},
    )


# ---- models, prompts, generations, judges and servers: rules generate, score_answers


LLAMA_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 600,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "max_position_embeddings": 512,
}


def _prompts(w: Work, n: int = 3) -> Path:
    items = [json.loads(x) for x in _elyza_lines(n)]
    path = w.path("results/data/eval_prompts.parquet")
    pl.DataFrame(
        {
            "id": [f"elyza/{i + 1}" for i in range(n)],
            "prompt": [x["input"] for x in items],
            "reference": [x["output"] for x in items],
            "eval_aspect": [x["eval_aspect"] for x in items],
        },
        schema={"id": pl.String, "prompt": pl.String, "reference": pl.String,
                "eval_aspect": pl.String},
    ).write_parquet(path)  # fmt: skip
    return path


def _generate(w: Work, model: str, prompts: Path, **params) -> Run:
    p = {
        "backend": "transformers",
        "backend_options": {},
        "max_new_tokens": 8,
        "temperature": 0.0,
        "top_p": 1.0,
        "batch_size": 2,
        "overflow": "truncate",
        "seed": 1234,
        "trust_remote_code": False,
        **params,
    }
    return w.script(
        "generate",
        input={"model": model, "prompts": str(prompts)},
        output={"generations": w.old("results/generations/sft.parquet")},
        params=p,
        wildcards={"version": "sft"},
    )


def _model_folder(w: Work, weights: dict[str, bytes]) -> str:
    folder = w.path("results/models/tiny/sft/config.json").parent
    (folder / "config.json").write_text(json.dumps(LLAMA_CONFIG))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    for name, data in weights.items():
        (folder / name).write_bytes(data)
    return str(folder)


@case(
    "model-no-weights",
    "models",
    r"tiny/sft: no model weights \(expected model\.safetensors or "
    r"model\.safetensors\.index\.json with its shards\)",
)
def _(w):
    return _generate(w, _model_folder(w, {}), _prompts(w))


@case(
    "model-pickle-only",
    "models",
    r"tiny/sft: only pickled \.bin weights found; unpickling can run arbitrary code\. "
    r"Convert them to safetensors, or set allow_pickle: true",
)
def _(w):
    weights = pickle.dumps({"model.embed_tokens.weight": [[0.0] * 32] * 600})
    return _generate(w, _model_folder(w, {"pytorch_model.bin": weights}), _prompts(w))


@case(
    "model-empty-tokenizer",
    "models",
    r"tiny/sft: the tokenizer encodes text to no tokens \(TokenizersBackend\); a SentencePiece "
    r"tokenizer\.model needs the protobuf package",
)
def _(w):
    """What transformers makes of a tokenizer.model it cannot read: an empty vocabulary."""
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = Path(_model_folder(w, {}))
    LlamaForCausalLM(LlamaConfig(**LLAMA_CONFIG)).save_pretrained(folder)
    empty = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()), eos_token="</s>")
    empty.save_pretrained(folder)
    return _generate(w, str(folder), _prompts(w))


@case("model-missing", "models", r"tiny/cpt: model folder does not exist")
def _(w):
    return _generate(w, str(w.root / "results" / "models" / "tiny" / "cpt"), _prompts(w))


@case(
    "selection-no-eligible-candidate",
    "models",
    r"config key 'base\.selection\.max_lost_char_rate': every candidate's tokenizer loses more "
    r"than 0\.001 of the held-out domain characters \(spm-a 2\.5%, spm-b 0\.8%\)",
)
def _(w):
    scores = []
    for name, lost in (("spm-a", 0.025), ("spm-b", 0.008)):
        score = {
            "candidate": name,
            "model_dir": f"results/base/{name}",
            "chars_per_token": 1.2,
            "domain_bits_per_char": 3.0,
            "lost_char_rate": lost,
        }
        scores.append(str(w.write(f"results/selection/scores/{name}.json", json.dumps(score))))
    return w.script(
        "select_base",
        input={"scores": scores},
        output={
            "table": w.old("results/selection/table.parquet"),
            "table_md": w.old("results/selection/table.md"),
            "chosen": w.old("results/selection/chosen.json"),
        },
        params={
            "weights": {"chars_per_token": 1.0, "domain_bits_per_char": 1.0},
            "choose": "auto",
            "max_lost_char_rate": 0.001,
        },
    )  # fmt: skip


@case("prompts-empty", "models", r"eval_prompts\.parquet: no prompts")
def _(w):
    return _generate(w, _model_folder(w, {"model.safetensors": b"x"}), _prompts(w, 0))


@case(
    "server-unreachable",
    "servers",
    r"openai backend: GET http://127\.0\.0\.1:\d+/v1/models failed after 2 tries: cannot reach "
    r"the server \(ConnectError.*\(config keys generate\.openai\.base_url, timeout_s, "
    r"max_retries\)",
)
def _(w):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    options = {
        "base_url": f"http://127.0.0.1:{port}/v1",
        "model": "sft",
        "endpoint": "chat",
        "api_key_env": None,
        "timeout_s": 5,
        "max_retries": 1,
        "backoff_s": 0.05,
    }
    model = _model_folder(w, {"model.safetensors": b"x"})
    return _generate(w, model, _prompts(w), backend="openai", backend_options=options)


def _generations(w: Work, drop: str | None = None) -> Path:
    items = [json.loads(x) for x in _elyza_lines(3)]
    df = pl.DataFrame(
        {
            "id": [f"elyza/{i + 1}" for i in range(3)],
            "prompt": [x["input"] for x in items],
            "reference": [x["output"] for x in items],
            "output": [x["output"][:60] for x in items],
        }
    )
    path = w.path("results/generations/sft.parquet")
    (df.drop(drop) if drop else df).write_parquet(path)
    return path


def _judge_folder(w: Work, base_url: str) -> str:
    from domainllm.evaluate.judge import prepare_judge

    folder = w.path("results/evaluators/judge/x").parent
    prepare_judge(
        str(folder),
        model="judge",
        templates={"pointwise": str(REPO / "config" / "judge" / "pointwise_ja.yaml")},
        backend="openai",
        openai={
            "base_url": base_url,
            "model": "judge",
            "endpoint": "chat",
            "api_key_env": None,
            "timeout_s": 10,
            "max_retries": 0,
        },
    )
    return str(folder)


def _score(w: Work, evaluator: str, generations: Path, name: str) -> Run:
    return w.script(
        "score_answers",
        input={"evaluator": evaluator, "generations": str(generations)},
        output={"scores": w.old(f"results/eval/scores/{name}/sft.parquet")},
        wildcards={"evaluator": name, "version": "sft"},
    )


@case(
    "generations-missing-columns",
    "evaluation",
    r"generations/sft\.parquet: missing column\(s\) output \(have id, prompt, reference\)",
)
def _(w):
    judge = _judge_folder(w, "http://127.0.0.1:9/v1")
    return _score(w, judge, _generations(w, drop="output"), "judge")


def _chat_reply(top: list[tuple[str, float]] | None) -> dict:
    choice: dict = {"index": 0, "message": {"role": "assistant", "content": "たぶん"}}
    if top is not None:
        alternatives = [{"token": t, "logprob": v} for t, v in top]
        choice["logprobs"] = {"content": [{**alternatives[0], "top_logprobs": alternatives}]}
    return {"choices": [choice]}


@case(
    "judge-reply-without-logprobs",
    "evaluation",
    r"judge: the reply to prompt 0 from http://127\.0\.0\.1:\d+/v1/chat/completions has no "
    r"log-probabilities of its first token \(no yes/no token to read\)",
)
def _(w):
    judge = _judge_folder(w, w.server(_chat_reply(None)))
    return _score(w, judge, _generations(w), "judge")


# ---------------------------------------------------------------- the checks


def _message(proc: subprocess.CompletedProcess, run: Run) -> str:
    """The error message the user sees: from the ``error:`` line to the end of stderr."""
    if run.snakemake:
        return proc.stdout + proc.stderr
    start = proc.stderr.find("error: ")
    assert start >= 0, f"no 'error:' line on stderr:\n{proc.stderr[-3000:]}"
    return proc.stderr[start:]


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused(c: Case, tmp_path: Path):
    w = Work(tmp_path)
    try:
        run = c.build(w)
        before = snapshot(tmp_path)
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(
            run.argv, cwd=run.cwd, env=env, capture_output=True, text=True, timeout=600
        )
        after = snapshot(tmp_path)
    finally:
        w.close()
    # 1. a clear message naming the file, line or config key; no traceback
    message = _message(proc, run)
    assert re.search(c.expect, message, re.S), f"expected /{c.expect}/ in:\n{message[-3000:]}"
    if not run.snakemake:
        assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    if run.log is not None:
        assert re.search(c.expect, run.log.read_text(encoding="utf-8"), re.S)
    # 2. a non-zero exit
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
    # 3. no partial output: nothing new (temporary files included)
    assert sorted(set(after) - set(before)) == []
    # 4. nothing already built lost: every earlier file byte for byte the same
    assert sorted(set(before) - set(after)) == []
    assert [p for p in before if before[p] != after[p]] == []


def test_catalogue_ids_are_unique_and_cover_every_area():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) >= 25
    areas = {c.area for c in CASES}
    assert areas >= {
        "config",
        "corpus",
        "instructions",
        "feedback",
        "models",
        "servers",
        "evaluation",
        "disk",
    }


def test_docs_list_every_case():
    doc = (REPO / "docs" / "reliability.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"`([a-z0-9-]+)`", doc))
    missing = [c.id for c in CASES if c.id not in listed]
    assert missing == [], f"docs/reliability.md lacks {missing}"


# ---------------------------------------------------------------- not errors, by design


def test_judge_reply_without_yes_or_no_is_counted_not_scored(tmp_path: Path):
    """A reply whose top tokens hold no yes/no word: no score (null), counted; never 0.5.

    Not an error: a small judge often ranks no yes/no token first (the embedded
    default's never does); validation reports the share as coverage and declares the
    judge unfit (docs/evaluation.md). The job succeeds and says so in its summary.
    """
    w = Work(tmp_path)
    try:
        url = w.server(_chat_reply([("たぶん", -0.2), ("多分", -1.9), ("、", -3.0)]))
        run = _score(w, _judge_folder(w, url), _generations(w), "judge")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.run(run.argv, cwd=run.cwd, env=env, capture_output=True, text=True)
    finally:
        w.close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    scores = pl.read_parquet(tmp_path / "results" / "eval" / "scores" / "judge" / "sft.parquet")
    assert scores.height == 3 and scores["score"].null_count() == 3
    assert "'no_verdict': 3" in run.log.read_text(encoding="utf-8")


def test_shards_of_a_vocabulary_beyond_uint16_are_uint32(tmp_path: Path):
    """The writer never makes the shards of the uint16 case: ids >= 65,536 survive as uint32."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from domainllm.corpus.shards import load_tokens, read_manifest, write_shards

    words = [f"w{i}" for i in range(70_000)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    folder = tmp_path / "tok"
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "w1"}))
    selected = tmp_path / "selected.parquet"
    texts = ["w5 w65535 w65536 w69999", "w70 w66000 w2"]
    pl.DataFrame({"id": ["a", "b"], "source": ["s", "s"], "text": texts}).write_parquet(selected)
    write_shards(str(selected), str(folder), str(tmp_path / "shards"), validation_fraction=0.0)
    assert read_manifest(tmp_path / "shards")["dtype"] == "uint32"
    ids = np.asarray(load_tokens(tmp_path / "shards")).tolist()
    assert ids == [5, 65535, 65536, 69999, 1, 70, 66000, 2, 1]
