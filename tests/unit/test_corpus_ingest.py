"""Tests of domainllm.corpus.ingest / readers / wikitext on the real sample dumps."""

from __future__ import annotations

import bz2
import functools
import gzip
import json
import lzma
import re
from pathlib import Path

import polars as pl
import pytest

from domainllm.corpus.ingest import ingest_corpus
from domainllm.corpus.readers import SourceStats, iter_json_array, read_mediawiki
from domainllm.corpus.wikitext import WikiTextConverter, is_disambiguation, is_redirect
from domainllm.errors import DataError, PipelineError

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "samples"
JA_TRUNC = SAMPLES / "wiki_dumps" / "jawiki-truncated-100k-lines.xml.bz2"
EN_DUMP = SAMPLES / "wiki_dumps" / "wp2txt_testdata_en.xml.bz2"
NER = SAMPLES / "stockmark_ner_wikipedia" / "ner.json"


def raw_pages(path: Path) -> list[dict]:
    """Complete pages of a dump found with regular expressions: an independent ground truth."""
    xml = bz2.open(path, "rt", encoding="utf-8").read()
    pages = []
    for m in re.finditer(r"<page>(.*?)</page>", xml, re.S):
        body = m.group(1)
        pages.append(
            {
                "title": re.search(r"<title>(.*?)</title>", body).group(1),
                "ns": re.search(r"<ns>(.*?)</ns>", body).group(1),
                "redirect": "<redirect" in body,
                "disambig": re.search(r"\{\{\s*(aimai|disambiguation|dab)\s*[|}]", body, re.I)
                is not None,
            }
        )
    return pages


@pytest.fixture(scope="module")
def ja_trunc(tmp_path_factory):
    out = tmp_path_factory.mktemp("ingest") / "docs.parquet"
    ingest_corpus(
        [
            {
                "name": "jawiki",
                "format": "mediawiki",
                "path": str(JA_TRUNC),
                "lang": "ja",
                "on_error": "skip",  # keep the complete pages of a dump cut mid-page
            }
        ],
        str(out),
    )
    stats = json.loads((out.parent / "docs_stats.json").read_text())
    return pl.read_parquet(out), stats["sources"]["jawiki"]


def test_truncated_dump_yields_clean_articles(ja_trunc):
    docs, stats = ja_trunc
    raw = raw_pages(JA_TRUNC)
    articles = [p for p in raw if p["ns"] == "0" and not p["redirect"] and not p["disambig"]]
    assert docs.columns == ["id", "source", "title", "text", "lang"]
    assert docs.height == len(articles) > 150
    assert set(docs["title"]) == {p["title"] for p in articles}
    assert docs["id"].str.starts_with("jawiki/").all() and docs["id"].n_unique() == docs.height
    assert (docs["lang"] == "ja").all()
    for text in docs["text"]:
        for markup in ("[[", "]]", "{{", "}}", "<ref", "thumb|", "'''", "__TOC__", "{|", "#expr"):
            assert markup not in text
    # Redirects, disambiguation pages and other namespaces are gone.
    titles = set(docs["title"])
    assert not titles & {p["title"] for p in raw if p["redirect"] or p["disambig"]}
    assert not any(
        ":" in t and t.split(":")[0] in {"Wikipedia", "Help", "プロジェクト"} for t in titles
    )
    amp = docs.filter(pl.col("title") == "アンパサンド")["text"][0]
    assert amp.startswith("アンパサンド（&, ampersand）は、並立助詞")
    assert "脚注" not in amp.split("\n")  # trailing reference sections dropped


def test_truncated_dump_records_the_cut(ja_trunc):
    docs, stats = ja_trunc
    raw = raw_pages(JA_TRUNC)
    assert stats["truncated"] is True
    assert stats["dropped"]["truncated"] == 1
    assert stats["read"] == len(raw) + 1  # the complete pages plus the cut-off one
    assert stats["kept"] == docs.height
    assert stats["read"] == stats["kept"] + sum(stats["dropped"].values())
    assert stats["dropped"]["redirect"] == sum(p["redirect"] and p["ns"] == "0" for p in raw)
    assert stats["dropped"]["non_article_namespace"] == sum(p["ns"] != "0" for p in raw)
    assert stats["dropped"]["disambiguation"] > 0
    assert any("truncated inside a page" in n for n in stats["notes"])


def test_english_dump_with_limit_and_json_source(tmp_path):
    out = tmp_path / "docs.parquet"
    ingest_corpus(
        [
            {"name": "en", "format": "mediawiki", "path": str(EN_DUMP), "lang": "en", "limit": 12},
            {
                "name": "ner",
                "format": "json",
                "path": str(NER),
                "lang": "ja",
                "text_field": "text",
                "id_field": "curid",
                "limit": 5343,
            },
        ],
        str(out),
    )
    docs = pl.read_parquet(out)
    stats = json.loads((tmp_path / "docs_stats.json").read_text())["sources"]
    en = docs.filter(pl.col("source") == "en")
    assert en.height == 12 and stats["en"]["kept"] == 12
    assert "AccessibleComputing" not in set(en["title"])  # a <redirect/> page
    assert stats["en"]["dropped"]["redirect"] > 0
    assert "Anarchism" in set(en["title"])
    assert all("{{" not in t and "[[" not in t for t in en["text"])
    # The sentences share curids: ids stay unique and deterministic.
    items = json.loads(NER.read_text(encoding="utf-8"))
    ner = docs.filter(pl.col("source") == "ner")
    assert ner.height == len(items) and ner["id"].n_unique() == ner.height
    assert ner["id"][0] == f"ner/{items[0]['curid']}"
    dup = next(c for c in (i["curid"] for i in items) if sum(j["curid"] == c for j in items) > 1)
    assert {f"ner/{dup}", f"ner/{dup}-1"} <= set(ner["id"])
    assert ner["text"].to_list() == [i["text"] for i in items]


MINI_DUMP = """<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.11/" version="0.11">
  <siteinfo><sitename>T</sitename><namespaces>
    <namespace key="0" /><namespace key="6">ファイル</namespace>
    <namespace key="14">Category</namespace></namespaces></siteinfo>
  <page><title>記事</title><ns>0</ns><id>1</id><revision><id>9</id>
    <text>'''記事'''は[[テスト|試験]]用の{{仮リンク|項目|en|Item}}である。{{Infobox|a=b}}&lt;ref&gt;出典&lt;/ref&gt;
[[ファイル:X.png|thumb|説明]]
{| class="wikitable"
| セル
|}
== 歴史 ==
本文。[[en:Article]]
== 脚注 ==
* 注記
[[Category:テスト]]</text></revision></page>
  <page><title>ノート:記事</title><ns>1</ns><id>2</id>
    <revision><text>議論</text></revision></page>
  <page><title>転送</title><ns>0</ns><id>3</id>
    <revision><text>#転送 [[記事]]</text></revision></page>
  <page><title>別転送</title><ns>0</ns><id>4</id><redirect title="記事" />
    <revision><text>x</text></revision></page>
  <page><title>曖昧</title><ns>0</ns><id>5</id>
    <revision><text>* [[A]]\n{{aimai}}</text></revision></page>
  <page><title>空</title><ns>0</ns><id>6</id><revision><text>{{stub}}</text></revision></page>
  <page><title>途中</title><ns>0</ns><id>7</id><revision><text>切れた"""


def _read(path, **extra):
    stats = SourceStats()
    docs = list(read_mediawiki({"path": str(path), **extra}, stats, "corpus.sources[0]"))
    return docs, stats


def test_mediawiki_reader_filters_and_converts(tmp_path):
    path = tmp_path / "mini.xml.xz"
    with lzma.open(path, "wt", encoding="utf-8") as f:
        f.write(MINI_DUMP)
    # The dump stops inside a page: an error, unless the source says on_error: skip.
    with pytest.raises(DataError, match=r"mini\.xml\.xz: the dump ends before </mediawiki>"):
        _read(path)
    docs, stats = _read(path, on_error="skip")
    assert [(d.key, d.title) for d in docs] == [("1", "記事")]
    assert docs[0].text == "記事は試験用の項目である。\n\n歴史\n本文。"
    assert dict(stats.dropped) == {
        "non_article_namespace": 1,
        "redirect": 2,
        "disambiguation": 1,
        "empty": 1,
        "truncated": 1,
    }
    assert stats.read == 7 and stats.truncated


def test_mediawiki_reader_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_text(MINI_DUMP.replace("<ns>1</ns>", "<ns>1</nz>"), encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.xml:16:\d+: malformed XML"):
        _read(bad)
    dup = tmp_path / "dup.xml"
    dup.write_text(
        MINI_DUMP.replace("<id>6</id>", "<id>1</id>").replace("{{stub}}", "本文"), "utf-8"
    )
    with pytest.raises(DataError, match=r"dup\.xml: duplicate document id '1'"):
        ingest_corpus(
            [
                {
                    "name": "w",
                    "format": "mediawiki",
                    "path": str(dup),
                    "lang": "ja",
                    "on_error": "skip",
                }
            ],
            str(tmp_path / "out.parquet"),
        )
    assert not (tmp_path / "out.parquet").exists()
    notxml = tmp_path / "other.xml"
    notxml.write_text("<html><body/></html>", encoding="utf-8")
    with pytest.raises(DataError, match="not a MediaWiki XML export"):
        _read(notxml)


def test_wikitext_helpers():
    assert is_redirect("#REDIRECT [[A]]") and is_redirect("  #転送 [[A]]") and not is_redirect("A")
    assert is_disambiguation("x\n{{Aimai}}") and is_disambiguation("{{Disambiguation|geo}}")
    assert is_disambiguation("{{人名の曖昧さ回避}}")
    assert not is_disambiguation("語{{要曖昧さ回避|date=2020}}") and not is_disambiguation(
        "{{Otheruses}}"
    )
    conv = WikiTextConverter()
    text = conv(
        "Alabama ({{IPAc-en|ˌ|æ}}) is a [[U.S. state|state]]{{sfn|X|2000}} of {{convert|1500|mi}}"
        "<ref name=a>{{cite web|url=u}}</ref>.\n[[Image:A.jpg|thumb|Caption]]\n"
        "{{lang|en|Hello}} [[:Category:Foo|cats]] &amp; [https://x.org site]\n"
        "== See also ==\n* [[B]]"
    )
    assert text == "Alabama is a state of 1500 mi.\n\nHello cats & site"
    # Dropped templates leave no stray quote marks or empty brackets behind.
    assert conv("『ガイバー』(''{{efn|注}}'')、続編") == "『ガイバー』、続編"
    assert conv("『ガイバー』(''{{Interlang|en|The Guyver}}'')") == "『ガイバー』(The Guyver)"
    assert conv("面積：'''{{formatnum:{{#expr:{{A|x}} + {{A|y}}}}}}''' km2") == "面積： km2"


def test_json_array_reader_streams_and_reports_lines(tmp_path):
    good = tmp_path / "a.json"
    good.write_text('[\n {"text": "一"},\n {"text": "二", "n": 12345}\n]\n', encoding="utf-8")
    assert list(iter_json_array(good, chunk_size=4)) == [
        (2, {"text": "一"}),
        (3, {"text": "二", "n": 12345}),
    ]
    bad = tmp_path / "b.json"
    bad.write_text('[\n {"text": "一"},\n {"text": 二}\n]\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"b\.json:3: invalid JSON"):
        list(iter_json_array(bad))
    cut = tmp_path / "c.json"
    cut.write_text('[\n {"text": "一"},\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"c\.json:3: the JSON array is not closed"):
        list(iter_json_array(cut))


def test_record_sources_and_their_errors(tmp_path):
    jl = tmp_path / "a.jsonl"
    jl.write_text(
        '{"body": "本文その一", "t": "T1"}\n{"body": ""}\n{"body": "本文その二", "t": "T2"}\n',
        encoding="utf-8",
    )
    pq = tmp_path / "b.parquet"
    pl.DataFrame({"text": ["x1", "x2"], "id": ["a", "b"]}).write_parquet(pq)
    out = tmp_path / "docs.parquet"
    with pytest.raises(
        DataError,
        match=r"a\.jsonl:2: no field 't' \(config key corpus\.sources\[0\]\.title_field\)",
    ):
        ingest_corpus(
            [
                {
                    "name": "j",
                    "format": "jsonl",
                    "path": str(jl),
                    "lang": "ja",
                    "text_field": "body",
                    "title_field": "t",
                }
            ],
            str(out),
        )
    with pytest.raises(
        DataError,
        match=r"a\.jsonl:1: no field 'text' \(config key corpus\.sources\[0\]\.text_field\)",
    ):
        ingest_corpus([{"name": "j", "format": "jsonl", "path": str(jl), "lang": "ja"}], str(out))
    ingest_corpus(
        [
            {"name": "j", "format": "jsonl", "path": str(jl), "lang": "ja", "text_field": "body"},
            {"name": "p", "format": "parquet", "path": str(pq), "lang": "other", "id_field": "id"},
        ],
        str(out),
    )
    docs = pl.read_parquet(out)
    assert docs["id"].to_list() == ["j/0", "j/2", "p/a", "p/b"]
    stats = json.loads((tmp_path / "docs_stats.json").read_text())["sources"]
    assert stats["j"]["dropped"] == {"empty": 1} and stats["j"]["read"] == 3
    with pytest.raises(DataError, match=r"no column\(s\) body \(config key corpus\.sources\[0\]"):
        ingest_corpus(
            [
                {
                    "name": "p",
                    "format": "parquet",
                    "path": str(pq),
                    "lang": "ja",
                    "text_field": "body",
                }
            ],
            str(tmp_path / "x.parquet"),
        )
    with pytest.raises(
        DataError, match=r"nope\.jsonl: file not found \(config key corpus\.sources\[0\]\.path\)"
    ):
        ingest_corpus(
            [{"name": "n", "format": "jsonl", "path": str(tmp_path / "nope.jsonl"), "lang": "ja"}],
            str(tmp_path / "x.parquet"),
        )
    with pytest.raises(PipelineError, match="duplicate source name"):
        ingest_corpus(
            [{"name": "j", "format": "jsonl", "path": str(jl), "lang": "ja"}] * 2,
            str(tmp_path / "x.parquet"),
        )


# --------------------------------------------------------------------------- formats

JA_DUMP = SAMPLES / "wiki_dumps" / "wp2txt_testdata_ja.xml.bz2"


def ner_items(n: int = 40) -> list[dict]:
    """Real Japanese Wikipedia sentences (stockmark NER) with their page ids."""
    items = json.loads(NER.read_text(encoding="utf-8"))[:n]
    return [{"text": i["text"], "curid": i["curid"]} for i in items]


def ingest_one(tmp_path, source: dict, name: str = "out", others: tuple = ()):
    """Ingest one source (before ``others``); return (its docs, its stats)."""
    out = tmp_path / f"{name}.parquet"
    stats = tmp_path / f"{name}_stats.json"
    ingest_corpus([{"name": "s", "lang": "ja", **source}, *others], str(out), stats=str(stats))
    docs = pl.read_parquet(out).filter(pl.col("source") == "s")
    return docs, json.loads(stats.read_text())["sources"]["s"]


def assert_adds_up(stats: dict) -> None:
    assert stats["read"] == stats["kept"] + sum(stats["dropped"].values())


def test_jsonl_gz_source(tmp_path):
    items = ner_items()
    path = tmp_path / "ner.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item, ensure_ascii=False) + "\n")
    docs, stats = ingest_one(tmp_path, {"format": "jsonl", "path": str(path), "id_field": "curid"})
    assert docs["text"].to_list() == [i["text"] for i in items]
    assert docs["id"][0] == f"s/{items[0]['curid']}" and docs["id"].n_unique() == len(items)
    assert stats["read"] == stats["kept"] == len(items) and stats["dropped"] == {}


def test_parquet_source_is_read_in_row_batches(tmp_path):
    from domainllm.corpus.readers import _iter_parquet

    items = ner_items(50)
    path = tmp_path / "ner.parquet"
    pl.DataFrame(
        {"body": [i["text"] for i in items], "page": [i["curid"] for i in items]}
    ).write_parquet(path, row_group_size=8)
    source = {"format": "parquet", "path": str(path), "text_field": "body", "id_field": "page"}
    rows = list(_iter_parquet(source, SourceStats(), ["body"], "corpus.sources[0]", batch=7))
    assert [w for w, _ in rows] == [f"row {i}" for i in range(1, 51)]
    assert [r["body"] for _, r in rows] == [i["text"] for i in items]
    docs, stats = ingest_one(tmp_path, source)
    assert docs["text"].to_list() == [i["text"] for i in items] and stats["kept"] == 50
    # A column that is not text is named with its config key.
    bad = tmp_path / "ints.parquet"
    pl.DataFrame({"text": [1, 2]}).write_parquet(bad)
    with pytest.raises(DataError, match=r"ints\.parquet: column 'text' is int64.*text_field"):
        ingest_one(tmp_path, {"format": "parquet", "path": str(bad)})
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match=r"broken\.parquet: not a readable Parquet file"):
        ingest_one(tmp_path, {"format": "parquet", "path": str(broken)})


def test_text_dir_source_reads_txt_files_recursively_in_order(tmp_path):
    items = ner_items(6)
    root = tmp_path / "texts"
    files = ["b.txt", "a.txt", "sub/z.txt", "sub/deeper/c.txt", "sub/y.txt", "a2.txt"]
    for rel, item in zip(files, items, strict=True):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(item["text"] + "\n", encoding="utf-8")
    (root / "notes.md").write_text("not a text file", encoding="utf-8")
    (root / ".hidden.txt").write_text("hidden", encoding="utf-8")
    (root / "empty.txt").write_text("  \n", encoding="utf-8")
    docs, stats = ingest_one(tmp_path, {"format": "text_dir", "path": str(root)})
    order = ["a.txt", "a2.txt", "b.txt", "sub/y.txt", "sub/z.txt", "sub/deeper/c.txt"]
    assert docs["id"].to_list() == [f"s/{p}" for p in order]
    by_file = dict(zip(files, items, strict=True))
    assert docs["text"].to_list() == [by_file[p]["text"] + "\n" for p in order]
    assert docs["title"].to_list() == [Path(p).stem for p in order]
    assert stats["dropped"] == {"empty": 1} and stats["read"] == 7
    with pytest.raises(DataError, match=r"a\.txt: not a folder \(config key corpus\.sources\[0\]"):
        ingest_one(tmp_path, {"format": "text_dir", "path": str(root / "a.txt")})


def test_hf_dataset_source(tmp_path):
    from datasets import Dataset, DatasetDict

    items = ner_items(30)
    ds = Dataset.from_dict(
        {"sentence": [i["text"] for i in items], "page": [i["curid"] for i in items]}
    )
    ds.save_to_disk(str(tmp_path / "one"))
    source = {"format": "hf_dataset", "text_field": "sentence", "id_field": "page"}
    docs, stats = ingest_one(tmp_path, {**source, "path": str(tmp_path / "one")})
    assert docs["text"].to_list() == [i["text"] for i in items] and stats["kept"] == 30
    assert docs["id"][0] == f"s/{items[0]['curid']}"
    DatasetDict({"train": ds.select(range(20)), "test": ds.select(range(20, 30))}).save_to_disk(
        str(tmp_path / "two")
    )
    docs, _ = ingest_one(tmp_path, {**source, "path": str(tmp_path / "two"), "split": "test"})
    assert docs["text"].to_list() == [i["text"] for i in items[20:]]
    with pytest.raises(DataError, match=r"split None not found \(config key .*split; splits: "):
        ingest_one(tmp_path, {**source, "path": str(tmp_path / "two")})
    with pytest.raises(DataError, match=r"no column\(s\) body .*columns: sentence, page"):
        ingest_one(tmp_path, {**source, "path": str(tmp_path / "one"), "text_field": "body"})


def test_mediawiki_xz_made_from_the_shipped_dump(tmp_path):
    xml = bz2.decompress(JA_DUMP.read_bytes())
    xz = tmp_path / "jawiki.xml.xz"
    xz.write_bytes(lzma.compress(xml, preset=0))
    plain = tmp_path / "jawiki.xml"
    plain.write_bytes(xml)
    outs = [
        ingest_one(tmp_path, {"format": "mediawiki", "path": str(p), "limit": 15}, name=p.name)
        for p in (JA_DUMP, xz, plain)
    ]
    assert outs[0][0].height == 15 and all(
        d[0].drop("id").equals(outs[0][0].drop("id")) for d in outs
    )
    assert outs[0][0]["id"].to_list() == outs[1][0]["id"].to_list()


# --------------------------------------------------------------------------- bad input


def write_jsonl_lines(path: Path, lines: list[bytes], opener=open) -> None:
    with opener(path, "wb") as f:
        f.write(b"".join(line + b"\n" for line in lines))


def good_lines(n: int = 12) -> list[bytes]:
    return [json.dumps(i, ensure_ascii=False).encode() for i in ner_items(n)]


def no_leftovers(tmp_path, name: str = "out") -> bool:
    return not list(tmp_path.glob(f"{name}.parquet*")) and not list(tmp_path.glob(f".{name}.*"))


@pytest.mark.parametrize(
    ("bad_line", "reason", "message"),
    [
        (b'{"text": "\xe6\x97\xa5\xff\xfe"}', "invalid_utf8", r"not valid UTF-8"),
        (b'{"text": "unterminated', "malformed_json", r"invalid JSON"),
        (b'["not", "an", "object"]', "not_object", r"expected an object, got list"),
        (b'{"body": "no text field"}', "missing_field", r"no field 'text' \(config key"),
        (b'{"text": 42}', "bad_type", r"field 'text' is int, not a string"),
    ],
)
def test_bad_jsonl_lines_error_or_are_counted(tmp_path, bad_line, reason, message):
    lines = good_lines()
    lines[4] = lines[9] = bad_line
    path = tmp_path / "bad.jsonl"
    write_jsonl_lines(path, lines)
    with pytest.raises(DataError, match=rf"bad\.jsonl:5: {message}"):
        ingest_one(tmp_path, {"format": "jsonl", "path": str(path)})
    assert no_leftovers(tmp_path)
    docs, stats = ingest_one(tmp_path, {"format": "jsonl", "path": str(path), "on_error": "skip"})
    assert docs.height == 10 and stats["kept"] == 10
    assert stats["dropped"] == {f"skipped_{reason}": 2}
    assert stats["skipped_examples"] == {f"skipped_{reason}": [5, 10]}
    assert_adds_up(stats)


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".xz"])
def test_truncated_compressed_jsonl(tmp_path, suffix):
    bz2_small_blocks = functools.partial(bz2.open, compresslevel=1)
    openers = {".gz": gzip.open, ".bz2": bz2_small_blocks, ".xz": lzma.open}
    whole = tmp_path / f"whole.jsonl{suffix}"
    write_jsonl_lines(whole, good_lines(3000), openers[suffix])
    cut = tmp_path / f"cut.jsonl{suffix}"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        DataError, match=rf"cut\.jsonl\{suffix}:\d+: truncated or corrupt compressed"
    ):
        ingest_one(tmp_path, {"format": "jsonl", "path": str(cut)})
    assert no_leftovers(tmp_path)
    docs, stats = ingest_one(tmp_path, {"format": "jsonl", "path": str(cut), "on_error": "skip"})
    # Every line before the break is kept, in order; the break is one counted skip.
    assert stats["dropped"] == {"skipped_corrupt_compressed": 1}
    assert stats["skipped_examples"]["skipped_corrupt_compressed"] == [docs.height + 1]
    texts = [i["text"] for i in ner_items(3000)]
    assert docs["text"].to_list() == texts[: docs.height] and 0 < docs.height < 3000
    assert_adds_up(stats)
    garbage = tmp_path / f"garbage.jsonl{suffix}"
    garbage.write_bytes(b"this is not compressed data at all\n" * 20)
    with pytest.raises(DataError, match=r"garbage\.jsonl.*:1: truncated or corrupt compressed"):
        ingest_one(tmp_path, {"format": "jsonl", "path": str(garbage)})


def test_corrupt_compressed_dump(tmp_path):
    garbage = tmp_path / "dump.xml.bz2"
    garbage.write_bytes(b"BZh9" + bytes(range(256)) * 8)
    with pytest.raises(DataError, match=r"dump\.xml\.bz2: not a readable compressed file"):
        ingest_one(tmp_path, {"format": "mediawiki", "path": str(garbage)})
    other = {"name": "t", "format": "json", "path": str(NER), "lang": "ja", "limit": 3}
    docs, stats = ingest_one(
        tmp_path, {"format": "mediawiki", "path": str(garbage), "on_error": "skip"}, others=[other]
    )
    assert stats["dropped"] == {"skipped_corrupt_compressed": 1} and docs.height == 0
    # A dump cut short inside the compressed stream keeps every complete page.
    data = JA_DUMP.read_bytes()
    cut = tmp_path / "cut.xml.bz2"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(DataError, match=r"cut\.xml\.bz2: the dump ends before </mediawiki>"):
        ingest_one(tmp_path, {"format": "mediawiki", "path": str(cut)})
    docs, stats = ingest_one(
        tmp_path, {"format": "mediawiki", "path": str(cut), "on_error": "skip"}
    )
    assert stats["truncated"] and docs.height > 20
    assert_adds_up(stats)


def test_malformed_xml_with_on_error_skip_keeps_earlier_pages(tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_text(MINI_DUMP.replace("<ns>1</ns>", "<ns>1</nz>"), encoding="utf-8")
    docs, stats = ingest_one(
        tmp_path, {"format": "mediawiki", "path": str(bad), "on_error": "skip"}
    )
    assert docs["title"].to_list() == ["記事"]
    assert stats["dropped"] == {"skipped_malformed_xml": 1}
    assert stats["skipped_examples"] == {"skipped_malformed_xml": [16]}
    assert any("bad.xml:16:" in n for n in stats["notes"])
    assert_adds_up(stats)


def test_invalid_utf8_in_other_formats(tmp_path):
    items = ner_items(5)
    arr = tmp_path / "a.json"
    body = ",\n".join(json.dumps(i, ensure_ascii=False) for i in items).encode()
    arr.write_bytes(b"[\n" + body.replace(b"SPRiNGS", b"SPR\xffNGS") + b"\n]\n")
    with pytest.raises(DataError, match=r"a\.json:2: not valid UTF-8"):
        ingest_one(tmp_path, {"format": "json", "path": str(arr)})
    docs, stats = ingest_one(tmp_path, {"format": "json", "path": str(arr), "on_error": "skip"})
    assert docs["text"].to_list() == [i["text"] for i in items[1:]]
    assert stats["dropped"] == {"skipped_invalid_utf8": 1}
    assert stats["skipped_examples"] == {"skipped_invalid_utf8": [2]}
    root = tmp_path / "texts"
    root.mkdir()
    (root / "good.txt").write_text(items[0]["text"], encoding="utf-8")
    (root / "bad.txt").write_bytes("一行目\n二行目".encode() + b"\xff\n")
    with pytest.raises(DataError, match=r"bad\.txt:2: not valid UTF-8"):
        ingest_one(tmp_path, {"format": "text_dir", "path": str(root)})
    docs, stats = ingest_one(
        tmp_path, {"format": "text_dir", "path": str(root), "on_error": "skip"}
    )
    assert docs["id"].to_list() == ["s/good.txt"]
    assert stats["skipped_examples"] == {"skipped_invalid_utf8": ["bad.txt:2"]}


def test_empty_source_is_an_error_or_a_counted_skip(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    (tmp_path / "none").mkdir()
    good = tmp_path / "good.jsonl"
    write_jsonl_lines(good, good_lines(3))
    for source in (
        {"format": "jsonl", "path": str(empty)},
        {"format": "json", "path": str(empty)},
        {"format": "text_dir", "path": str(tmp_path / "none")},
    ):
        with pytest.raises(DataError, match=r"empty source: no records \(config key corpus"):
            ingest_one(tmp_path, source)
    out = tmp_path / "docs.parquet"
    ingest_corpus(
        [
            {"name": "e", "format": "jsonl", "path": str(empty), "lang": "ja", "on_error": "skip"},
            {"name": "g", "format": "jsonl", "path": str(good), "lang": "ja"},
        ],
        str(out),
    )
    stats = json.loads((tmp_path / "docs_stats.json").read_text())["sources"]
    assert stats["e"]["skipped_empty_source"] == 1 and stats["e"]["read"] == 0
    assert pl.read_parquet(out)["source"].to_list() == ["g"] * 3


# --------------------------------------------------------------------------- XML safety

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE mediawiki [
  <!ENTITY lol "lol">
  <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
  <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
  <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
  <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
  <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
  <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
  <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.11/">
  <page><title>Lol</title><ns>0</ns><id>1</id><revision><text>&lol9;</text></revision></page>
</mediawiki>
"""

EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE mediawiki [<!ENTITY secret SYSTEM "file:///etc/hostname">]>
<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.11/">
  <page><title>X</title><ns>0</ns><id>1</id><revision><text>&secret;</text></revision></page>
</mediawiki>
"""


@pytest.mark.parametrize("dump", [BILLION_LAUGHS, EXTERNAL_ENTITY])
@pytest.mark.parametrize("on_error", ["error", "skip"])
def test_dumps_with_entities_are_refused_not_expanded(tmp_path, dump, on_error):
    path = tmp_path / "evil.xml"
    path.write_text(dump, encoding="utf-8")
    with pytest.raises(DataError, match=r"evil\.xml:2: a document type declaration \(DTD\)"):
        ingest_one(tmp_path, {"format": "mediawiki", "path": str(path), "on_error": on_error})
    assert no_leftovers(tmp_path)
    # Without the DTD the references are undefined entities: an error, still nothing expanded.
    body = "\n".join(
        line for line in dump.splitlines() if "ENTITY" not in line and "]>" not in line
    )
    path.write_text(body.replace("<!DOCTYPE mediawiki [", ""), encoding="utf-8")
    with pytest.raises(DataError, match=r"evil\.xml:\d+:\d+: malformed XML: undefined entity"):
        ingest_one(tmp_path, {"format": "mediawiki", "path": str(path)})


def test_skips_record_only_the_first_few_lines(tmp_path):
    lines = good_lines(30)
    for i in range(2, 30, 3):  # lines 3, 6, ..., 30
        lines[i] = b"{broken"
    path = tmp_path / "many.jsonl"
    write_jsonl_lines(path, lines)
    docs, stats = ingest_one(tmp_path, {"format": "jsonl", "path": str(path), "on_error": "skip"})
    assert stats["dropped"] == {"skipped_malformed_json": 10} and docs.height == 20
    assert stats["skipped_examples"] == {"skipped_malformed_json": [3, 6, 9, 12, 15]}


def test_ingest_is_deterministic(tmp_path):
    root = tmp_path / "texts"
    for i, item in enumerate(ner_items(30)):
        (root / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        (root / f"d{i % 3}" / f"{i:02d}.txt").write_text(item["text"], encoding="utf-8")
    sources = [
        {"name": "t", "format": "text_dir", "path": str(root), "lang": "ja"},
        {"name": "n", "format": "json", "path": str(NER), "lang": "ja", "limit": 50},
        {"name": "w", "format": "mediawiki", "path": str(JA_TRUNC), "lang": "ja", "limit": 5},
    ]
    for name in ("a", "b"):
        ingest_corpus(sources, str(tmp_path / f"{name}.parquet"), stats=str(tmp_path / "s.json"))
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


def test_wiki_tables_are_dropped_even_where_the_parser_keeps_them_as_text():
    # Shapes from the shipped jawiki dump: a caption with unclosed bold (the
    # parser gives up on the table), a table inside a <div>, a nested table, and
    # the cell line left over when the table's opening line was in a template.
    conv = WikiTextConverter()
    markup = (
        "前文。\n\n"
        '{| class="wikitable sortable" style="text-align:right"\n'
        "|+'''栃木県及び県内主要市町 人口密度\n"
        "!県市町!!総人口\n|-\n|宇都宮市||518,594\n|}\n"
        '中文。\n<div style="font-size: 90%">\n{| class="wikitable"\n| a\n'
        "{|\n| nested\n|}\n| b\n|}\n</div>\n"
        "{{Infobox animanga/Manga\n| 作者 = 高橋\n}}\n"
        '| colspan="2" style="padding: 0;"|\n'
        "後文。"
    )
    text = conv(markup)
    assert text == "前文。\n\n中文。\n\n後文。", text
    # A line that starts with a pipe but says something is not mistaken for attributes.
    assert conv("| 本文の行") == "| 本文の行"
    # An unbalanced layout tag the parser leaves as text (enwiki "Alkali metal").
    assert conv('Nuclear\n<div style="float: right;">\nAll the alkali metals') == (
        "Nuclear\n\nAll the alkali metals"
    )
    # An unbalanced layout tag the parser leaves as text (enwiki "Alkali metal").
    assert conv('Nuclear\n<div style="float: right;">\nAll the alkali metals') == (
        "Nuclear\n\nAll the alkali metals"
    )
