"""Ingest raw corpora into one document table: ``docs.parquet`` + ``docs_stats.json``.

Each source of ``corpus.sources`` is streamed by the reader registered for its
format (see ``domainllm.corpus.readers``: mediawiki, jsonl, json, parquet,
text_dir, hf_dataset). Documents are written in batches, one Parquet row group
at a time, to a temporary file renamed into place at the end, so memory does
not grow with the corpus (document ids are checked for repeats through 8-byte
hashes); on any error the temporary file is removed and no output is written.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import numpy as np

from domainllm.corpus.readers import SourceStats, get_reader, skipping
from domainllm.errors import DataError, PipelineError
from domainllm.io import atomic_path, write_json

log = logging.getLogger(__name__)

COLUMNS = ("id", "source", "title", "text", "lang")
BATCH_DOCS = 5_000
ROW_GROUP_ROWS = 8192  # rows per row group of docs.parquet: bounds what a streaming reader holds


def stats_path_for(output: str | Path) -> Path:
    """The ingest statistics file that sits next to ``docs.parquet``."""
    return Path(output).with_name("docs_stats.json")


def _key_hashes(keys: list[str]) -> np.ndarray:
    """64-bit BLAKE2b hashes of document keys (uint64)."""
    digest = b"".join(hashlib.blake2b(k.encode("utf-8"), digest_size=8).digest() for k in keys)
    return np.frombuffer(digest, dtype=np.uint64)


def _check_unique_keys(hashes: np.ndarray, source: dict, n: int) -> None:
    """Raise if two documents of ``source`` share a key (found through their hashes).

    A repeated hash is confirmed by re-reading the source's keys, so a hash
    collision alone never fails a run.
    """
    order = np.sort(hashes)
    repeated = order[1:][order[1:] == order[:-1]]
    if len(repeated) == 0:
        return
    wanted = set(repeated.tolist())
    seen: set[str] = set()
    reader = get_reader(source["format"], "")
    for count, doc in enumerate(reader(source, SourceStats(), "")):
        if count >= n:
            break
        if _key_hashes([doc.key])[0] in wanted:
            if doc.key in seen:
                where = f"{source['path']}: duplicate document id '{doc.key}'"
                raise DataError(f"{where} in source {source['name']}")
            seen.add(doc.key)


def ingest_corpus(sources: list[dict], output: str, stats: str | None = None) -> None:
    """Read every source and write the document table.

    Args:
        sources: the ``corpus.sources`` entries (name, format, path, lang, and
            optionally text_field, id_field, title_field, split, limit, on_error).
        output: the Parquet file (columns id, source, title, text, lang); ids are
            ``<source>/<key>`` (a page id, a record id or a record number).
        stats: where the per-source statistics go (default: ``docs_stats.json``
            next to ``output``): pages/records read, kept, dropped per reason, and
            whether the input was truncated; records skipped under
            ``on_error: skip`` appear as ``skipped_<reason>`` drops with
            ``skipped_examples`` (where the first few were).

    Raises:
        PipelineError: a duplicate source name, or no document at all.
        DataError: unreadable input, an empty source (unless ``on_error: skip``)
            or a duplicate document id within a source, naming the file (and
            line where known).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    stats_file = Path(stats) if stats else stats_path_for(output)
    names = [s["name"] for s in sources]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise PipelineError(f"config key 'corpus.sources': duplicate source name(s) {dupes}")

    report: dict = {"sources": {}, "total_docs": 0}
    out = Path(output)
    schema = pa.schema([(c, pa.string()) for c in COLUMNS])
    with atomic_path(out) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        batch: dict[str, list] = {c: [] for c in COLUMNS}

        def flush() -> None:
            if batch["id"]:
                writer.write_table(pa.table(batch, schema=schema), row_group_size=ROW_GROUP_ROWS)
                for v in batch.values():
                    v.clear()

        for i, source in enumerate(sources):
            key = f"corpus.sources[{i}]"
            name, fmt, path = source["name"], source["format"], source["path"]
            if not Path(path).exists():
                raise DataError(f"{path}: file not found (config key {key}.path)")
            reader = get_reader(fmt, key)
            limit = source.get("limit")
            st = SourceStats()
            key_hashes: list[np.ndarray] = []
            keys: list[str] = []
            t0 = time.perf_counter()
            with tqdm(desc=f"ingest {name}", unit="doc", mininterval=5) as bar:
                for doc in reader(source, st, key):
                    keys.append(doc.key)
                    batch["id"].append(f"{name}/{doc.key}")
                    batch["source"].append(name)
                    batch["title"].append(doc.title)
                    batch["text"].append(doc.text)
                    batch["lang"].append(source["lang"])
                    st.kept += 1
                    bar.update()
                    if len(keys) >= BATCH_DOCS:
                        key_hashes.append(_key_hashes(keys))
                        keys.clear()
                    if len(batch["id"]) >= BATCH_DOCS:
                        flush()
                    if limit is not None and st.kept >= limit:
                        st.notes.append(f"stopped at limit={limit} ({key}.limit)")
                        break
            key_hashes.append(_key_hashes(keys))
            _check_unique_keys(np.concatenate(key_hashes), source, st.kept)
            if st.read == 0:
                msg = f"{path}: empty source: no records (config key {key}.path)"
                if not skipping(source):
                    raise DataError(msg)
                st.notes.append(f"{msg}; skipped (on_error: skip)")
                log.warning("%s; skipped (on_error: skip)", msg)
            entry = {"format": fmt, "path": str(path), "lang": source["lang"], **st.as_dict()}
            if st.read == 0:
                entry["skipped_empty_source"] = 1
            entry["seconds"] = round(time.perf_counter() - t0, 2)
            report["sources"][name] = entry
            report["total_docs"] += st.kept
            log.info(
                "%s: read %d, kept %d, dropped %s%s (%.1fs)",
                name,
                st.read,
                st.kept,
                dict(st.dropped),
                " [input truncated]" if st.truncated else "",
                entry["seconds"],
            )
            if st.kept == 0:
                log.warning("%s: no documents kept from %s", name, path)
        flush()
        if report["total_docs"] == 0:
            raise PipelineError("corpus.sources: no documents were read from any source")
    write_json(report, stats_file)
    log.info("wrote %d documents to %s", report["total_docs"], out)
