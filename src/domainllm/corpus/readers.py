"""Streaming readers of raw corpora, registered by format.

A reader takes one ``corpus.sources[i]`` entry and yields ``RawDoc``s (a key
unique within the source, a title, clean text), counting what it reads and what
it drops (with a reason) in a ``SourceStats``. Memory stays flat in the size of
the corpus: files are read line by line, in blocks, or in row batches. Register
a new format with ``@register_reader("name")``; the schema's
``corpus.sources[].format`` enum names the formats a config may use.

Bad input (a malformed JSON line, invalid UTF-8, a missing text field, a
truncated or garbled compressed file, malformed XML, a MediaWiki dump that ends
before ``</mediawiki>``) raises ``DataError`` naming the file and line. With
``on_error: skip`` in the source's config it is counted instead, as
``skipped_<reason>`` in the source's ``dropped`` counts, with where the first few
were (``skipped_examples``); records that cannot be told apart any more (the rest
of a corrupt compressed stream) end the source, and a dump without its closing
tag keeps its complete pages (``truncated`` in the statistics, a cut-off page
dropped as ``truncated``).
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import logging
import lzma
import os
import re
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domainllm.errors import DataError, PipelineError

log = logging.getLogger(__name__)

# Why a page or record is not a document.
NON_ARTICLE = "non_article_namespace"
REDIRECT = "redirect"
DISAMBIGUATION = "disambiguation"
EMPTY = "empty"
TRUNCATED = "truncated"

# Why bad input was skipped (with on_error: skip); counted as "skipped_<reason>".
MALFORMED_JSON = "malformed_json"
INVALID_UTF8 = "invalid_utf8"
NOT_OBJECT = "not_object"
MISSING_FIELD = "missing_field"
BAD_TYPE = "bad_type"
CORRUPT_COMPRESSED = "corrupt_compressed"
CORRUPT_FILE = "corrupt_file"
MALFORMED_XML = "malformed_xml"

SKIP_EXAMPLES = 5  # where the first few skips of each reason were
# What a damaged compressed stream raises while it is read.
CORRUPT_ERRORS = (EOFError, OSError, zlib.error, lzma.LZMAError)


@dataclass
class RawDoc:
    """One document as a reader yields it; ``key`` is unique within its source."""

    key: str
    title: str
    text: str


@dataclass
class SourceStats:
    """What a reader saw in one source: ``read == kept + sum(dropped.values())``."""

    read: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    truncated: bool = False
    notes: list[str] = field(default_factory=list)
    skipped_examples: dict[str, list] = field(default_factory=dict)

    def drop(self, reason: str) -> None:
        self.dropped[reason] += 1

    def skip(self, reason: str, where: Any) -> None:
        """Count one skipped record (already counted in ``read``) and where it was."""
        name = f"skipped_{reason}"
        self.dropped[name] += 1
        examples = self.skipped_examples.setdefault(name, [])
        if len(examples) < SKIP_EXAMPLES:
            examples.append(where)

    def as_dict(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "kept": self.kept,
            "dropped": dict(sorted(self.dropped.items())),
            "truncated": self.truncated,
            "notes": self.notes,
            "skipped_examples": dict(sorted(self.skipped_examples.items())),
        }


def skipping(source: dict) -> bool:
    """True if the source's config says ``on_error: skip``."""
    return source.get("on_error", "error") == "skip"


def bad_input(source: dict, stats: SourceStats, reason: str, where: Any, message: str) -> None:
    """Raise ``DataError(message)``, or count a skip when the source says ``on_error: skip``."""
    if not skipping(source):
        raise DataError(message)
    stats.skip(reason, where)
    if len(stats.skipped_examples.get(f"skipped_{reason}", ())) <= 1:
        log.warning("%s (skipped: on_error: skip)", message)


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


class _ArrowRaw(io.RawIOBase):
    """A pyarrow input stream as a raw Python file, so that it can be buffered and iterated."""

    def __init__(self, stream):
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._stream.close()
        super().close()


def open_binary(path: str | Path):
    """Open a file for binary reading, decompressing ``.bz2``, ``.xz``, ``.gz`` and ``.zst``.

    Zstandard goes through pyarrow's codec (no extra package); a damaged stream
    raises ``OSError`` like the others.
    """
    p = str(path)
    if p.endswith(".bz2"):
        return bz2.open(p, "rb")
    if p.endswith(".xz"):
        return lzma.open(p, "rb")
    if p.endswith(".gz"):
        return gzip.open(p, "rb")
    if p.endswith((".zst", ".zstd")):
        import pyarrow as pa

        return io.BufferedReader(_ArrowRaw(pa.input_stream(p, compression="zstd")))
    return open(p, "rb")


# --------------------------------------------------------------------------- MediaWiki


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child_text(el, name: str, ns: str) -> str | None:
    child = el.find(f"{ns}{name}")
    return None if child is None else (child.text or "")


class _Forbidden(Exception):
    """Raised from an expat handler: the input declares a DTD or entities."""


def _xml_parser(events: list):
    """An expat parser that builds ElementTree elements and refuses DTDs and entities.

    Element events go to ``events`` as ``("start" | "end", element)``. A document
    type declaration, an entity declaration or an external entity reference
    raises ``_Forbidden``, so nothing is ever expanded or fetched (no billion
    laughs, no external entities); the predefined entities (``&lt;`` ...) and
    character references still work, and any other entity reference is an
    "undefined entity" error.
    """
    import xml.etree.ElementTree as ET
    from xml.parsers import expat

    builder = ET.TreeBuilder()
    parser = expat.ParserCreate(namespace_separator="}")
    parser.buffer_text = True
    parser.buffer_size = 1 << 16
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)

    def name(n: str) -> str:
        return "{" + n if "}" in n else n

    def start(tag, attrs):
        events.append(("start", builder.start(name(tag), {name(k): v for k, v in attrs.items()})))

    def end(tag):
        events.append(("end", builder.end(name(tag))))

    def forbid(what: str):
        def handler(*args):
            raise _Forbidden(what)

        return handler

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = builder.data
    parser.StartDoctypeDeclHandler = forbid("a document type declaration (DTD)")
    parser.EntityDeclHandler = forbid("an entity declaration")
    parser.ExternalEntityRefHandler = forbid("an external entity reference")
    return parser


def iter_mediawiki_pages(
    path: str | Path, chunk_size: int = 1 << 20, *, on_error: str = "error"
) -> Iterator[tuple[str, Any]]:
    """Stream a MediaWiki XML export: yield ``("siteinfo", el)`` then ``("page", el)``s.

    The XML namespace (``export-0.10``, ``export-0.11``, ...) is read from the root
    element. Each element is cleared after the caller has seen it, so memory stays
    flat on full dumps. Parsing uses expat without DTD processing: a dump that
    declares a DTD or entities is refused (``DataError``), nothing is expanded
    or fetched.

    A stream that ends early (no ``</mediawiki>``, a page cut off mid-way, a
    truncated compressed file) ends the iteration cleanly with a final
    ``("truncated", info)`` item, where ``info`` says whether a page was cut off and
    where the input ended. Malformed XML before the end raises ``DataError`` with
    the file, line and column, as does a compressed file that is corrupt before
    the first element; with ``on_error="stop"`` they end the iteration with
    ``("malformed", info)`` or ``("corrupt", info)`` instead (``info``: line,
    reason, whether a page was cut off).
    """
    from xml.parsers import expat

    events: list = []
    parser = _xml_parser(events)
    root = None
    ns = ""
    in_page = False

    def drain():
        nonlocal root, ns, in_page
        pending = events[:]
        events.clear()
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

    def feed(block: bytes, final: bool) -> None:
        try:
            parser.Parse(block, final)
        except _Forbidden as e:
            raise DataError(
                f"{path}:{parser.CurrentLineNumber}: {e} is not allowed in a MediaWiki dump "
                "(DTDs and entities are neither expanded nor fetched)"
            ) from None

    truncated_stream = None
    try:
        f = open_binary(path)
    except FileNotFoundError as e:
        raise DataError(f"{path}: file not found") from e
    with f:
        while True:
            try:
                block = f.read(chunk_size)
            except CORRUPT_ERRORS as e:
                truncated_stream = f"compressed stream ends early or is corrupt ({e})"
                break
            if not block:
                break
            try:
                feed(block, False)
            except expat.ExpatError as e:
                yield from drain()
                where = f"{path}:{e.lineno}:{e.offset}"
                if on_error != "stop":
                    raise DataError(f"{where}: malformed XML: {e}") from e
                yield (
                    "malformed",
                    {
                        "line": e.lineno,
                        "reason": f"{where}: malformed XML: {e}",
                        "page_cut_off": in_page,
                    },
                )
                return
            yield from drain()
    if truncated_stream and root is None:
        msg = f"{path}: not a readable compressed file: {truncated_stream}"
        if on_error != "stop":
            raise DataError(msg)
        yield "corrupt", {"line": 1, "reason": msg, "page_cut_off": False}
        return
    # Everything was fed: the final parse reports input that stops before the document ends.
    try:
        feed(b"", True)
        yield from drain()
    except expat.ExpatError as e:
        yield from drain()
        if root is None:  # nothing that looks like a dump at all (an empty file, say)
            msg = f"{path}:{e.lineno}:{e.offset}: malformed XML: {e}"
            if on_error != "stop":
                raise DataError(msg) from e
            yield "malformed", {"line": e.lineno, "reason": msg, "page_cut_off": False}
            return
        yield (
            "truncated",
            {
                "page_cut_off": in_page,
                "reason": truncated_stream or f"XML ends early at line {e.lineno} ({e})",
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
    """Articles of a MediaWiki XML dump: namespace 0, no redirects, no disambiguation pages.

    A dump that ends before ``</mediawiki>`` is an error unless the source says
    ``on_error: skip``; then its complete pages are kept and the cut is recorded.
    """
    from domainllm.corpus.wikitext import WikiTextConverter, is_disambiguation, is_redirect

    path = source["path"]
    convert = WikiTextConverter()
    ns_names: dict[int, str] = {}
    on_error = "stop" if skipping(source) else "error"
    for kind, el in iter_mediawiki_pages(path, on_error=on_error):
        if kind in ("malformed", "corrupt"):
            stats.read += 1  # the rest of the stream, from the bad line on
            reason = MALFORMED_XML if kind == "malformed" else CORRUPT_COMPRESSED
            stats.skip(reason, el["line"])
            msg = f"{el['reason']}; stopped reading this source (on_error: skip)"
            stats.notes.append(msg)
            log.warning(msg)
            continue
        if kind == "siteinfo":
            ns = el.tag[: el.tag.index("}") + 1] if el.tag.startswith("{") else ""
            ns_names = _namespace_names(el, ns)
            convert = WikiTextConverter(
                n.lower() for k, n in ns_names.items() if k in (-2, 6, 14) and n
            )
            continue
        if kind == "truncated":
            if not skipping(source):
                where = "inside a page" if el["page_cut_off"] else "after a complete page"
                raise DataError(
                    f"{path}: the dump ends before </mediawiki>, {where} ({el['reason']}): "
                    "an incomplete download or a cut sample? Set on_error: skip on this "
                    f"source (config key {key}.on_error) to keep its complete pages"
                )
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

_SURROGATE = re.compile(r"[\udc80-\udcff]")  # undecodable bytes under surrogateescape


class _StreamCorrupt(Exception):
    """A compressed stream broke off; ``line`` is where."""

    def __init__(self, line: int, error: Exception):
        super().__init__(str(error))
        self.line, self.error = line, error


def iter_json_array(
    path: str | Path,
    chunk_size: int = 1 << 20,
    *,
    on_invalid_utf8: Callable[[int, str], None] | None = None,
    on_corrupt: Callable[[int, str], None] | None = None,
) -> Iterator[tuple[int, Any]]:
    """Stream the items of a file holding one JSON array: yield ``(line, item)``.

    Items are decoded one at a time from a sliding buffer, so a large array is
    never held in memory whole (``.gz``, ``.bz2`` and ``.xz`` are decompressed on
    the fly). Errors name the file and line. An item with bytes that are not
    UTF-8 inside its strings raises ``DataError``, or is passed over after
    ``on_invalid_utf8(line, message)``; a compressed stream that breaks off
    raises, or ends the iteration after ``on_corrupt(line, message)``. A file
    with nothing but whitespace yields nothing.
    """
    decoder = json.JSONDecoder()
    ws = re.compile(r"\s*")
    try:
        raw = open_binary(path)
    except FileNotFoundError as e:
        raise DataError(f"{path}: file not found") from e
    with io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape") as f:
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
            except CORRUPT_ERRORS as e:
                raise _StreamCorrupt(line + buf.count("\n", pos), e) from e
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

        try:
            c = skip_ws()
            if c == "":
                return
            if c != "[":
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
                    raise DataError(
                        f"{path}:{line}: the JSON array is not closed (file truncated?)"
                    )
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
                item_line = line
                valid = _SURROGATE.search(buf, pos, end) is None
                line += buf.count("\n", pos, end)
                pos = end
                first = False
                if valid:
                    yield item_line, item
                else:
                    msg = f"{path}:{item_line}: not valid UTF-8 inside this item"
                    if on_invalid_utf8 is None:
                        raise DataError(msg)
                    on_invalid_utf8(item_line, msg)
            if skip_ws() != "":
                raise DataError(f"{path}:{line}: unexpected data after the JSON array")
        except _StreamCorrupt as e:
            msg = f"{path}: truncated or corrupt compressed file at line {e.line}: {e.error}"
            if on_corrupt is None:
                raise DataError(msg) from e
            on_corrupt(e.line, msg)


def iter_jsonl(source: dict, stats: SourceStats) -> Iterator[tuple[int, Any]]:
    """``(line, object)`` per non-blank line of a JSON Lines file (``.gz``/``.bz2``/``.xz`` ok).

    Each line is decoded on its own, so a bad line (invalid UTF-8, invalid
    JSON) is an error naming its line, or one counted skip with ``on_error: skip``.
    A compressed stream that breaks off ends the file the same way.
    """
    path = source["path"]
    lineno = 0
    with open_binary(path) as f:
        lines = iter(f)
        while True:
            try:
                raw = next(lines)
            except StopIteration:
                return
            except CORRUPT_ERRORS as e:
                stats.read += 1
                bad_input(
                    source,
                    stats,
                    CORRUPT_COMPRESSED,
                    lineno + 1,
                    f"{path}:{lineno + 1}: truncated or corrupt compressed file "
                    f"after line {lineno}: {e}",
                )
                return
            lineno += 1
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                stats.read += 1
                bad_input(
                    source,
                    stats,
                    INVALID_UTF8,
                    lineno,
                    f"{path}:{lineno}: not valid UTF-8 "
                    f"(byte {e.start + 1} of the line: {e.reason})",
                )
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                stats.read += 1
                bad_input(
                    source,
                    stats,
                    MALFORMED_JSON,
                    lineno,
                    f"{path}:{lineno}: invalid JSON: {e.msg} (column {e.colno})",
                )
                continue
            yield lineno, obj


def _records(source: dict, stats: SourceStats, key: str, items) -> Iterator[RawDoc]:
    """Shared logic of the record formats: field lookup, ids, empty texts, skips."""
    path = source["path"]
    text_field = source.get("text_field") or "text"
    id_field = source.get("id_field")
    title_field = source.get("title_field")
    seen: Counter = Counter()
    n = -1
    for where, obj in items:
        n += 1
        stats.read += 1
        at = f"{path}:{where}"
        if not isinstance(obj, dict):
            bad_input(
                source,
                stats,
                NOT_OBJECT,
                where,
                f"{at}: expected an object, got {type(obj).__name__}",
            )
            continue
        missing = [
            (f, k)
            for f, k in (
                (text_field, "text_field"),
                (id_field, "id_field"),
                (title_field, "title_field"),
            )
            if f is not None and (f not in obj or (k == "id_field" and obj[f] is None))
        ]
        if missing:
            f, k = missing[0]
            bad_input(
                source,
                stats,
                MISSING_FIELD,
                where,
                f"{at}: no field '{f}' (config key {key}.{k})",
            )
            continue
        text = obj[text_field]
        if text is None:
            text = ""
        if not isinstance(text, str):
            bad_input(
                source,
                stats,
                BAD_TYPE,
                where,
                f"{at}: field '{text_field}' is {type(text).__name__}, not a string "
                f"(config key {key}.text_field)",
            )
            continue
        if id_field is not None:
            # Ids may repeat (e.g. sentences of one article share its page id): the
            # first keeps the id, later ones get "-1", "-2", ... in reading order.
            value = str(obj[id_field]).strip()
            doc_key = value if seen[value] == 0 else f"{value}-{seen[value]}"
            seen[value] += 1
        else:
            doc_key = str(n)
        title = ""
        if title_field is not None:
            title = "" if obj[title_field] is None else str(obj[title_field])
        if not text.strip():
            stats.drop(EMPTY)
            continue
        yield RawDoc(key=doc_key, title=title, text=text)


@register_reader("jsonl")
def read_jsonl_source(source: dict, stats: SourceStats, key: str) -> Iterator[RawDoc]:
    """JSON Lines (``.gz``, ``.bz2``, ``.xz`` ok), one object per line."""
    if not Path(source["path"]).is_file():
        raise DataError(f"{source['path']}: file not found (config key {key}.path)")
    yield from _records(source, stats, key, iter_jsonl(source, stats))


@register_reader("json")
def read_json_source(source: dict, stats: SourceStats, key: str) -> Iterator[RawDoc]:
    """One JSON array of objects, streamed item by item."""
    path = source["path"]
    skip = None
    if skipping(source):

        def skip(reason):
            def count(line: int, message: str) -> None:
                stats.read += 1
                bad_input(source, stats, reason, line, message)

            return count

    items = iter_json_array(
        path,
        on_invalid_utf8=skip and skip(INVALID_UTF8),
        on_corrupt=skip and skip(CORRUPT_COMPRESSED),
    )
    yield from _records(source, stats, key, items)


@register_reader("parquet")
def read_parquet_source(source: dict, stats: SourceStats, key: str) -> Iterator[RawDoc]:
    """A Parquet file, read in row batches with pyarrow (``line`` in messages is the row)."""
    cols = [source.get("text_field") or "text"]
    cols += [c for c in (source.get("id_field"), source.get("title_field")) if c]
    cols = list(dict.fromkeys(cols))
    yield from _records(source, stats, key, _iter_parquet(source, stats, cols, key))


def _iter_parquet(source: dict, stats: SourceStats, columns: list[str], key: str, batch=10_000):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = source["path"]
    try:
        pf = pq.ParquetFile(path, pre_buffer=False)  # pre-buffering keeps every row group read
    except FileNotFoundError as e:
        raise DataError(f"{path}: file not found (config key {key}.path)") from e
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file: {e}") from e
    schema = pf.schema_arrow
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise DataError(
            f"{path}: no column(s) {', '.join(missing)} (config key {key}; "
            f"columns: {', '.join(schema.names)})"
        )
    text_type = schema.field(columns[0]).type
    if not (
        pa.types.is_string(text_type)
        or pa.types.is_large_string(text_type)
        or pa.types.is_string_view(text_type)
        or pa.types.is_null(text_type)
    ):
        raise DataError(
            f"{path}: column '{columns[0]}' is {text_type}, not a string "
            f"(config key {key}.text_field)"
        )
    row = 0
    batches = pf.iter_batches(batch_size=batch, columns=columns)
    while True:
        try:
            rb = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as e:
            stats.read += 1
            bad_input(
                source,
                stats,
                CORRUPT_FILE,
                f"row {row + 1}",
                f"{path}: row {row + 1}: corrupt Parquet data: {e}",
            )
            return
        for i, obj in enumerate(rb.to_pylist()):
            yield f"row {row + i + 1}", obj
        row += rb.num_rows


# --------------------------------------------------------------------------- folders


def _walk_txt(root: Path) -> Iterator[Path]:
    """``.txt`` files under ``root``, recursively, sorted by name (files of a folder first).

    Hidden files and folders (a leading ".") are passed over.
    """
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.endswith(".txt") and not name.startswith("."):
                yield Path(dirpath) / name


@register_reader("text_dir")
def read_text_dir(source: dict, stats: SourceStats, key: str) -> Iterator[RawDoc]:
    """A folder of UTF-8 ``.txt`` files, one document each (key: the path inside the folder)."""
    root = Path(source["path"])
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (config key {key}.path; format text_dir)")
    for file in _walk_txt(root):
        rel = file.relative_to(root).as_posix()
        stats.read += 1
        data = file.read_bytes()
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            line = data.count(b"\n", 0, e.start) + 1
            bad_input(
                source,
                stats,
                INVALID_UTF8,
                f"{rel}:{line}",
                f"{file}:{line}: not valid UTF-8 ({e.reason})",
            )
            continue
        if not text.strip():
            stats.drop(EMPTY)
            continue
        yield RawDoc(key=rel, title=file.stem, text=text)


@register_reader("hf_dataset")
def read_hf_dataset(source: dict, stats: SourceStats, key: str) -> Iterator[RawDoc]:
    """A Hugging Face ``datasets`` folder written by ``save_to_disk`` (memory-mapped Arrow).

    A ``DatasetDict`` needs ``split`` unless it has one split. Rows are read in
    batches; ``line`` in messages is the row.
    """
    from datasets import DatasetDict, load_from_disk

    path = source["path"]
    try:
        ds = load_from_disk(str(path))
    except FileNotFoundError as e:
        raise DataError(f"{path}: not a datasets folder written by save_to_disk ({e})") from e
    except Exception as e:  # datasets raises several types for foreign folders
        raise DataError(f"{path}: not a readable datasets folder: {e}") from e
    split = source.get("split")
    if isinstance(ds, DatasetDict):
        if split is None and len(ds) == 1:
            split = next(iter(ds))
        if split not in ds:
            raise DataError(
                f"{path}: split {split!r} not found (config key {key}.split; "
                f"splits: {', '.join(ds)})"
            )
        ds = ds[split]
    elif split is not None:
        raise DataError(f"{path}: a single dataset has no splits (config key {key}.split)")
    cols = [source.get("text_field") or "text"]
    cols += [c for c in (source.get("id_field"), source.get("title_field")) if c]
    cols = list(dict.fromkeys(cols))
    missing = [c for c in cols if c not in ds.column_names]
    if missing:
        raise DataError(
            f"{path}: no column(s) {', '.join(missing)} (config key {key}; "
            f"columns: {', '.join(ds.column_names)})"
        )
    ds = ds.select_columns(cols)

    def rows():
        row = 0
        for batch in ds.iter(batch_size=1000):
            values = [batch[c] for c in cols]
            for i, vals in enumerate(zip(*values, strict=True)):
                yield f"row {row + i + 1}", dict(zip(cols, vals, strict=True))
            row += len(values[0])

    yield from _records(source, stats, key, rows())
