"""Ingest raw corpora into one document table: ``docs.parquet`` + ``docs_stats.json``.

Each source of ``corpus.sources`` is streamed by the reader registered for its
format (see ``domainllm.corpus.readers``: mediawiki, jsonl, json, parquet,
text_dir, hf_dataset). Documents are written in batches to Parquet parts and
merged at the end, so memory does not grow with the corpus; on any error the
parts are removed and no output is written.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

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
    import polars as pl
    from tqdm import tqdm

    stats_file = Path(stats) if stats else stats_path_for(output)
    names = [s["name"] for s in sources]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise PipelineError(f"config key 'corpus.sources': duplicate source name(s) {dupes}")

    report: dict = {"sources": {}, "total_docs": 0}
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.parts-") as parts_dir:
        parts: list[Path] = []
        batch: dict[str, list] = {c: [] for c in COLUMNS}

        def flush() -> None:
            if batch["id"]:
                part = Path(parts_dir) / f"part_{len(parts):05d}.parquet"
                pl.DataFrame(batch, schema={c: pl.String for c in COLUMNS}).write_parquet(part)
                parts.append(part)
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
            seen: set[str] = set()
            t0 = time.perf_counter()
            with tqdm(desc=f"ingest {name}", unit="doc", mininterval=5) as bar:
                for doc in reader(source, st, key):
                    doc_id = f"{name}/{doc.key}"
                    if doc_id in seen:
                        raise DataError(
                            f"{path}: duplicate document id '{doc.key}' in source {name}"
                        )
                    seen.add(doc_id)
                    batch["id"].append(doc_id)
                    batch["source"].append(name)
                    batch["title"].append(doc.title)
                    batch["text"].append(doc.text)
                    batch["lang"].append(source["lang"])
                    st.kept += 1
                    bar.update()
                    if len(batch["id"]) >= BATCH_DOCS:
                        flush()
                    if limit is not None and st.kept >= limit:
                        st.notes.append(f"stopped at limit={limit} ({key}.limit)")
                        break
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
        with atomic_path(out) as tmp:
            pl.scan_parquet(parts).sink_parquet(
                tmp, compression="zstd", statistics=True, row_group_size=ROW_GROUP_ROWS
            )
    write_json(report, stats_file)
    log.info("wrote %d documents to %s", report["total_docs"], out)
