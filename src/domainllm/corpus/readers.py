"""Streaming readers of raw corpora, registered by format.

A reader takes one ``corpus.sources[i]`` entry and yields ``RawDoc``s (a key
unique within the source, a title, clean text), counting what it reads and what
it drops (with a reason) in a ``SourceStats``. Register a new format with
``@register_reader("name")``; the schema's ``corpus.sources[].format`` enum names
the formats a config may use.
"""

from __future__ import annotations

import bz2
import json
import logging
import lzma
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domainllm.errors import DataError, PipelineError
from domainllm.io import open_text, read_jsonl

log = logging.getLogger(__name__)

# Why a page or record is not a document.
NON_ARTICLE = "non_article_namespace"
REDIRECT = "redirect"
DISAMBIGUATION = "disambiguation"
EMPTY = "empty"
TRUNCATED = "truncated"


@dataclass
class RawDoc:
    """One document as a reader yields it; ``key`` is unique within its source."""

    key: str
    title: str
    text: str


@dataclass
class SourceStats:
    """What a reader saw in one source."""

    read: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    truncated: bool = False
    notes: list[str] = field(default_factory=list)

    def drop(self, reason: str) -> None:
        self.dropped[reason] += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "kept": self.kept,
            "dropped": dict(sorted(self.dropped.items())),
            "truncated": self.truncated,
            "notes": self.notes,
        }


Reader = Callable[[dict, SourceStats, str], Iterator[RawDoc]]
READERS: dict[str, Reader] = {}


def register_reader(fmt: str) -> Callable[[Reader], Reader]:
    """Register ``fn(source, stats, key) -> Iterator[RawDoc]`` as the reader of ``fmt``.

    ``key`` is the config key path of the source (``corpus.sources[2]``) for messages.
    """

    def deco(fn: Reader) -> Reader:
        READERS[fmt] = fn
        return fn

    return deco


def get_reader(fmt: str, key: str = "corpus.sources[]") -> Reader:
    try:
        return READERS[fmt]
    except KeyError:
        raise PipelineError(
            f"config key '{key}.format': unknown format '{fmt}' "
            f"(known: {', '.join(sorted(READERS))})"
        ) from None


def open_binary(path: str | Path):
    """Open a file for binary reading, decompressing ``.bz2``, ``.xz`` and ``.gz``."""
    p = str(path)
    if p.endswith(".bz2"):
        return bz2.open(p, "rb")
    if p.endswith(".xz"):
        return lzma.open(p, "rb")
    if p.endswith(".gz"):
        import gzip

        return gzip.open(p, "rb")
    return open(p, "rb")


# --------------------------------------------------------------------------- MediaWiki


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child_text(el, name: str, ns: str) -> str | None:
    child = el.find(f"{ns}{name}")
    return None if child is None else (child.text or "")


def iter_mediawiki_pages(path: str | Path, chunk_size: int = 1 << 20) -> Iterator[tuple[str, Any]]:
    """Stream a MediaWiki XML export: yield ``("siteinfo", el)`` then ``("page", el)``s.

    The XML namespace (``export-0.10``, ``export-0.11``, ...) is read from the root
    element. Each element is cleared after the caller has seen it, so memory stays
    flat on full dumps. Parsing uses the standard library's expat, which neither
    fetches external entities nor touches the network.

    A stream that ends early (no ``</mediawiki>``, a page cut off mid-way, a
    truncated compressed file) ends the iteration cleanly with a final
    ``("truncated", info)`` item, where ``info`` says whether a page was cut off and
    where the input ended. Malformed XML before the end raises ``DataError`` with
    the file, line and column.
    """
    import xml.etree.ElementTree as ET

    parser = ET.XMLPullParser(events=("start", "end"))
    root = None
    ns = ""
    in_page = False
    line_hint = 0

    def events():
        nonlocal root, ns, in_page
        try:
            pending = list(parser.read_events())
        except ET.ParseError as e:  # feed() queues parse errors as events
            raise parse_error(e) from e
        for event, el in pending:
            if event == "start":
                if root is None:
                    root = el
                    ns = el.tag[: el.tag.index("}") + 1] if el.tag.startswith("{") else ""
                    if _local(el.tag) != "mediawiki":
                        raise DataError(
                            f"{path}: root element is <{_local(el.tag)}>, not <mediawiki>; "
                            "not a MediaWiki XML export"
                        )
                elif el.tag == f"{ns}page":
                    in_page = True
                continue
            if el.tag == f"{ns}page":
                in_page = False
                yield "page", el
                root.clear()  # drop the finished page (and any earlier siblings)
            elif el.tag == f"{ns}siteinfo":
                yield "siteinfo", el
                root.clear()

    def parse_error(e: Exception) -> DataError:
        line, col = getattr(e, "position", (None, None))
        where = f"{path}:{line}:{col}" if line is not None else str(path)
        return DataError(f"{where}: malformed XML: {e}")

    truncated_stream = None
    try:
        with open_binary(path) as f:
            while True:
                try:
                    block = f.read(chunk_size)
                except (EOFError, OSError, lzma.LZMAError) as e:
                    truncated_stream = f"compressed stream ends early ({e})"
                    break
                if not block:
                    break
                line_hint += block.count(b"\n")
                parser.feed(block)
                yield from events()
    except FileNotFoundError as e:
        raise DataError(f"{path}: file not found") from e
    # Everything was fed: close() reports input that stops before the document ends.
    try:
        parser.close()
        yield from events()
    except ET.ParseError as e:
        yield from events()
        if root is None:
            raise parse_error(e) from e
        yield (
            "truncated",
            {
                "page_cut_off": in_page,
                "reason": truncated_stream or f"XML ends early at line {line_hint + 1} ({e})",
            },
        )
        return
    if truncated_stream:
        yield "truncated", {"page_cut_off": in_page, "reason": truncated_stream}


def _namespace_names(siteinfo, ns: str) -> dict[int, str]:
    names = {}
    for el in siteinfo.iter(f"{ns}namespace"):
        try:
            names[int(el.get("key"))] = (el.text or "").strip()
        except (TypeError, ValueError):
            continue
    return names


@register_reader("mediawiki")
def read_mediawiki(source: dict, stats: SourceStats, key: str) -> Iterator[RawDoc]:
    """Articles of a MediaWiki XML dump: namespace 0, no redirects, no disambiguation pages."""
    from domainllm.corpus.wikitext import WikiTextConverter, is_disambiguation, is_redirect

    path = source["path"]
    convert = WikiTextConverter()
    ns_names: dict[int, str] = {}
    for kind, el in iter_mediawiki_pages(path):
        if kind == "siteinfo":
            ns = el.tag[: el.tag.index("}") + 1] if el.tag.startswith("{") else ""
            ns_names = _namespace_names(el, ns)
            convert = WikiTextConverter(
                n.lower() for k, n in ns_names.items() if k in (-2, 6, 14) and n
            )
            continue
        if kind == "truncated":
            stats.truncated = True
            if el["page_cut_off"]:
                stats.read += 1
                stats.drop(TRUNCATED)
            if el["page_cut_off"]:
                msg = f"{path}: input truncated inside a page: {el['reason']}; dropped that page"
            else:
                msg = (
                    f"{path}: input ends before </mediawiki>, after a complete page: {el['reason']}"
                )
            stats.notes.append(msg)
            log.warning(msg)
            continue
        ns = el.tag[: el.tag.index("}") + 1] if el.tag.startswith("{") else ""
        stats.read += 1
        title = _child_text(el, "title", ns) or ""
        page_id = _child_text(el, "id", ns)
        ns_text = _child_text(el, "ns", ns)
        if ns_text is not None:
            is_article = ns_text.strip() == "0"
        else:  # exports before 0.6 have no <ns>: judge by the title's prefix
            prefix = title.split(":", 1)[0] if ":" in title else None
            is_article = prefix is None or prefix not in {n for n in ns_names.values() if n}
        if not is_article:
            stats.drop(NON_ARTICLE)
            continue
        if not page_id:
            raise DataError(f"{path}: page '{title}' has no <id>")
        revision = el.find(f"{ns}revision")
        text_el = None if revision is None else revision.find(f"{ns}text")
        markup = "" if text_el is None else (text_el.text or "")
        if el.find(f"{ns}redirect") is not None or is_redirect(markup):
            stats.drop(REDIRECT)
            continue
        if is_disambiguation(markup):
            stats.drop(DISAMBIGUATION)
            continue
        text = convert(markup)
        if not text.strip():
            stats.drop(EMPTY)
            continue
        yield RawDoc(key=page_id.strip(), title=title, text=text)


# --------------------------------------------------------------------------- records


def iter_json_array(path: str | Path, chunk_size: int = 1 << 20) -> Iterator[tuple[int, Any]]:
    """Stream the items of a file holding one JSON array: yield ``(line, item)``.

    Items are decoded one at a time from a sliding buffer, so a large array is
    never held in memory whole. Errors name the file and line.
    """
    decoder = json.JSONDecoder()
    ws = re.compile(r"\s*")
    try:
        f = open_text(path)
    except FileNotFoundError as e:
        raise DataError(f"{path}: file not found") from e
    with f:
        buf = ""
        pos = 0
        line = 1
        eof = False

        def fill() -> bool:
            nonlocal buf, pos, eof
            if eof:
                return False
            try:
                more = f.read(chunk_size)
            except UnicodeDecodeError as e:
                raise DataError(f"{path}: not valid UTF-8 after line {line} ({e.reason})") from e
            if not more:
                eof = True
                return False
            buf = buf[pos:] + more
            pos = 0
            return True

        def skip_ws() -> str:
            nonlocal pos, line
            while True:
                m = ws.match(buf, pos)
                line += buf.count("\n", pos, m.end())
                pos = m.end()
                if pos < len(buf):
                    return buf[pos]
                if not fill():
                    return ""

        if skip_ws() != "[":
            raise DataError(f"{path}:{line}: expected a JSON array ('[') at the top level")
        pos += 1
        first = True
        while True:
            c = skip_ws()
            if c == "]":
                pos += 1
                break
            if not first:
                if c != ",":
                    raise DataError(f"{path}:{line}: expected ',' or ']' between array items")
                pos += 1
                c = skip_ws()
            if c == "":
                raise DataError(f"{path}:{line}: the JSON array is not closed (file truncated?)")
            while True:
                try:
                    item, end = decoder.raw_decode(buf, pos)
                    # A number at the buffer's edge may continue in the next block.
                    if end == len(buf) and not eof and fill():
                        continue
                    break
                except json.JSONDecodeError as e:
                    if fill():
                        continue
                    err_line = line + buf.count("\n", pos, e.pos)
                    raise DataError(f"{path}:{err_line}: invalid JSON: {e.msg}") from e
            yield line, item
            line += buf.count("\n", pos, end)
            pos = end
            first = False
        if skip_ws() != "":
            raise DataError(f"{path}:{line}: unexpected data after the JSON array")


def _iter_parquet(path: str | Path, columns: list[str], key: str, batch: int = 10_000):
    import polars as pl

    try:
        lf = pl.scan_parquet(path)
        schema = lf.collect_schema()
    except FileNotFoundError as e:
        raise DataError(f"{path}: file not found") from e
    except Exception as e:  # polars raises several error types for non-Parquet input
        raise DataError(f"{path}: not a readable Parquet file: {e}") from e
    missing = [c for c in columns if c not in schema]
    if missing:
        raise DataError(
            f"{path}: no column(s) {', '.join(missing)} (config key {key}; "
            f"columns: {', '.join(schema.names())})"
        )
    offset = 0
    while True:
        df = lf.slice(offset, batch).select(columns).collect()
        if df.height == 0:
            return
        for i, row in enumerate(df.iter_rows(named=True)):
            yield offset + i + 1, row
        offset += df.height


def _records(source: dict, stats: SourceStats, key: str, items) -> Iterator[RawDoc]:
    """Shared logic of the record formats: field lookup, ids, empty texts."""
    path = source["path"]
    text_field = source.get("text_field") or "text"
    id_field = source.get("id_field")
    title_field = source.get("title_field")
    seen: Counter = Counter()
    for n, (where, obj) in enumerate(items):
        stats.read += 1
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{where}: expected an object, got {type(obj).__name__}")
        if text_field not in obj:
            raise DataError(
                f"{path}:{where}: no field '{text_field}' (config key {key}.text_field)"
            )
        text = obj[text_field]
        if text is None:
            text = ""
        if not isinstance(text, str):
            raise DataError(
                f"{path}:{where}: field '{text_field}' is {type(text).__name__}, not a string "
                f"(config key {key}.text_field)"
            )
        if id_field is not None:
            if obj.get(id_field) is None:
                raise DataError(
                    f"{path}:{where}: no field '{id_field}' (config key {key}.id_field)"
                )
            # Ids may repeat (e.g. sentences of one article share its page id): the
            # first keeps the id, later ones get "-1", "-2", ... in reading order.
            value = str(obj[id_field]).strip()
            doc_key = value if seen[value] == 0 else f"{value}-{seen[value]}"
            seen[value] += 1
        else:
            doc_key = str(n)
        title = ""
        if title_field is not None:
            if title_field not in obj:
                raise DataError(
                    f"{path}:{where}: no field '{title_field}' (config key {key}.title_field)"
                )
            title = "" if obj[title_field] is None else str(obj[title_field])
        if not text.strip():
            stats.drop(EMPTY)
            continue
        yield RawDoc(key=doc_key, title=title, text=text)


@register_reader("jsonl")
def read_jsonl_source(source: dict, stats: SourceStats, key: str) -> Iterator[RawDoc]:
    """JSON Lines (``.gz`` ok), one object per line."""
    if not Path(source["path"]).exists():
        raise DataError(f"{source['path']}: file not found (config key {key}.path)")
    yield from _records(source, stats, key, read_jsonl(source["path"]))


@register_reader("json")
def read_json_source(source: dict, stats: SourceStats, key: str) -> Iterator[RawDoc]:
    """One JSON array of objects, streamed item by item."""
    yield from _records(source, stats, key, iter_json_array(source["path"]))


@register_reader("parquet")
def read_parquet_source(source: dict, stats: SourceStats, key: str) -> Iterator[RawDoc]:
    """A Parquet file, read in row batches (``line`` in messages is the 1-based row)."""
    cols = [source.get("text_field") or "text"]
    cols += [c for c in (source.get("id_field"), source.get("title_field")) if c]
    rows = (
        (f"row {i}", row)
        for i, row in _iter_parquet(source["path"], list(dict.fromkeys(cols)), key)
    )
    yield from _records(source, stats, key, rows)
