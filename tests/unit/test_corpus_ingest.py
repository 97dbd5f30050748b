"""Tests of domainllm.corpus.ingest / readers / wikitext on the real sample dumps."""

from __future__ import annotations

import bz2
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
        [{"name": "jawiki", "format": "mediawiki", "path": str(JA_TRUNC), "lang": "ja"}], str(out)
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
    docs, stats = _read(path)
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
            [{"name": "w", "format": "mediawiki", "path": str(dup), "lang": "ja"}],
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
