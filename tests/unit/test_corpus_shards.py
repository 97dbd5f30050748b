"""Tests of domainllm.corpus.shards: writing, reading and decoding token shards."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from domainllm.corpus.clean import normalize_text
from domainllm.corpus.shards import (
    TokenBlocks,
    decode_documents,
    load_tokens,
    read_block,
    split_documents,
    token_dtype,
    validation_mask,
    write_shards,
)
from domainllm.errors import DataError

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "samples"


def sentences(n: int) -> list[str]:
    items = json.loads(
        (SAMPLES / "stockmark_ner_wikipedia" / "ner.json").read_text(encoding="utf-8")
    )
    return [normalize_text(d["text"]) for d in items[:n]]


def save_bpe(folder: Path, texts: list[str], vocab_size: int = 600) -> Path:
    """A byte-level BPE tokenizer folder like the ones the pipeline builds."""
    from tests.unit._tiny_lm import build_tokenizer

    folder.mkdir(parents=True)
    build_tokenizer(texts, vocab_size, chat_template=False).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shards")
    texts = sentences(300)
    # Special-token strings in a document are text: an HTML strikethrough, say.
    texts.append(
        "English text, with spaces  and\nnewlines: 2024年度の売上高は1,234億円。"
        "取消線の<s>旧価格</s>と <pad> <unk> も本文。"
    )
    tok = save_bpe(tmp / "tok", texts[:200])
    sel = pl.DataFrame(
        {
            "id": [f"s/{i}" for i in range(len(texts))],
            "source": ["a", "b"] * 150 + ["c"],
            "title": [""] * len(texts),
            "text": texts,
            "lang": ["ja"] * len(texts),
            "score": np.linspace(1, 0, len(texts)),
        }
    )
    sel.write_parquet(tmp / "selected.parquet")
    out = tmp / "shards" / "tok"
    write_shards(
        str(tmp / "selected.parquet"),
        str(tok),
        str(out),
        tokens_per_shard=1000,
        validation_fraction=0.1,
        seed=7,
    )
    return tmp, texts, tok, out


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def test_manifest_and_fixed_size_shards(setup):
    tmp, texts, tok, out = setup
    m = manifest(out)
    assert m["format"] == 2 and m["dtype"] == "uint16" and m["vocab_size"] == 600
    assert m["eos_id"] == 2 and m["tokens_per_shard"] == 1000
    for split in ("train", "validation"):
        entry = m["splits"][split]
        shards = entry["shards"]
        assert [s["file"] for s in shards] == [
            f"{split}/shard_{i:05d}.bin" for i in range(len(shards))
        ]
        # Fixed size: every shard holds exactly tokens_per_shard tokens but the last.
        assert all(s["tokens"] == 1000 for s in shards[:-1])
        assert 0 < shards[-1]["tokens"] <= 1000
        assert sum(s["tokens"] for s in shards) == entry["total_tokens"]
        assert sum(s["docs"] for s in shards) == entry["total_docs"]  # docs ending there
        assert sum(v["tokens"] for v in entry["sources"].values()) == entry["total_tokens"]
        for s in shards:
            data = (out / s["file"]).read_bytes()
            assert len(data) == 2 * s["tokens"]
            assert hashlib.sha256(data).hexdigest() == s["sha256"]
    assert len(m["splits"]["train"]["shards"]) > 3
    # The top level repeats the train split, where format-1 readers look.
    train = m["splits"]["train"]
    assert m["shards"] == train["shards"] and m["total_tokens"] == train["total_tokens"]
    assert m["total_docs"] == train["total_docs"] and m["sources"] == train["sources"]
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == sorted(
        ["manifest.json", "train/documents.parquet", "validation/documents.parquet"]
        + [s["file"] for split in m["splits"].values() for s in split["shards"]]
    )


def test_tokenizer_identity_in_the_manifest(setup):
    _, _, tok, out = setup
    ident = manifest(out)["tokenizer"]
    assert ident["sha256"] == hashlib.sha256((tok / "tokenizer.json").read_bytes()).hexdigest()
    assert ident["sha256_of"] == "tokenizer.json"
    assert ident["name"] == "tok" and ident["path"] == str(tok)
    assert ident["vocab_size"] == 600 and ident["eos_id"] == 2


def test_split_is_by_document_disjoint_complete_and_deterministic(setup, tmp_path):
    tmp, texts, tok, out = setup
    m = manifest(out)
    docs = {s: pl.read_parquet(out / m["splits"][s]["documents"]) for s in m["splits"]}
    train, val = set(docs["train"]["id"]), set(docs["validation"]["id"])
    assert not train & val
    assert train | val == {f"s/{i}" for i in range(len(texts))}
    assert 10 <= len(val) <= 60  # ~10% of 301
    assert m["splits"]["validation"]["total_docs"] == len(val)
    # Selection order (best first) within each split.
    for split in docs.values():
        rank = [int(i.split("/")[1]) for i in split["id"]]
        assert rank == sorted(rank)
    # The same draw from the id alone: a smaller selection keeps each document's split.
    sub = pl.read_parquet(tmp / "selected.parquet").filter(pl.col("score") > 0.5)
    sub.write_parquet(tmp_path / "sub.parquet")
    write_shards(
        str(tmp_path / "sub.parquet"),
        str(tok),
        str(tmp_path / "sub"),
        tokens_per_shard=1000,
        validation_fraction=0.1,
        seed=7,
    )
    sub_val = set(pl.read_parquet(tmp_path / "sub/validation/documents.parquet")["id"])
    assert sub_val == val & set(sub["id"])
    mask = validation_mask(list(sub["id"]), 0.1, 7)
    assert set(sub.filter(pl.Series(mask))["id"]) == sub_val
    assert validation_mask(list(sub["id"]), 0.1, 8).tolist() != mask.tolist()


def test_round_trip_per_split(setup):
    tmp, texts, tok, out = setup
    m = manifest(out)
    by_id = {f"s/{i}": t for i, t in enumerate(texts)}
    for split in ("train", "validation"):
        tokens = load_tokens(out, split, verify=True)
        entry = m["splits"][split]
        assert tokens.ndim == 1 and tokens.dtype == np.uint16
        assert len(tokens) == entry["total_tokens"]
        assert int((np.asarray(tokens) == m["eos_id"]).sum()) == entry["total_docs"]
        assert tokens[-1] == m["eos_id"]
        docs = pl.read_parquet(out / entry["documents"])
        # byte-level BPE: exact, in selection order
        assert decode_documents(out, split=split) == [by_id[i] for i in docs["id"]]
        ends = (docs["offset"] + docs["tokens"] - 1).to_list()
        assert all(tokens[e] == m["eos_id"] for e in ends)
        assert docs["offset"].to_list() == [0] + list(np.cumsum(docs["tokens"])[:-1])
    train = load_tokens(out)  # the default split is train
    assert np.array_equal(np.asarray(train), np.asarray(load_tokens(out, "train")))
    single = tmp / "single"
    write_shards(
        str(tmp / "selected.parquet"), str(tok), str(single), tokens_per_shard=10**7, seed=7
    )
    one = load_tokens(single)
    assert isinstance(one, np.memmap)
    assert decode_documents(single, limit=3) == decode_documents(out, limit=3)


def test_block_reader_matches_the_concatenated_stream(setup):
    _, _, _, out = setup
    m = manifest(out)
    for split in ("train", "validation"):
        whole = np.concatenate(
            [np.fromfile(out / s["file"], dtype="<u2") for s in m["splits"][split]["shards"]]
        )
        for block_len in (1, 137, 1000, 2500):
            blocks = TokenBlocks(out, block_len, split=split)
            assert len(blocks) == len(whole) // block_len
            n = len(blocks)
            for i in sorted({0, 1, n // 2, n - 1} & set(range(n))):
                expect = whole[i * block_len : (i + 1) * block_len]
                assert np.array_equal(blocks[i], expect), (split, block_len, i)
            if n:
                assert np.array_equal(blocks[-1], blocks[n - 1])
            with pytest.raises(IndexError):
                blocks[n]
    # A block that spans shard boundaries (137 does not divide 1000).
    assert np.array_equal(read_block(out, 7, 137), np.asarray(load_tokens(out))[959:1096])
    assert read_block(out, 7, 137).dtype == np.uint16
    v = read_block(out, 0, 50, split="validation")
    assert np.array_equal(v, np.asarray(load_tokens(out, "validation"))[:50])


def test_blocks_read_only_the_shards_they_need(setup, tmp_path):
    import shutil

    _, _, _, out = setup
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    m = manifest(copy)
    # Corrupt the bytes (not the size) of every train shard but the first: block 0
    # still reads right, because nothing else is read.
    for s in m["splits"]["train"]["shards"][1:]:
        f = copy / s["file"]
        f.write_bytes(b"\xff" * f.stat().st_size)
    assert np.array_equal(read_block(copy, 0, 500), read_block(out, 0, 500))
    assert not np.array_equal(read_block(copy, 3, 500), read_block(out, 3, 500))


def test_load_tokens_validates(setup, tmp_path):
    import shutil

    _, _, _, out = setup
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "train/shard_00001.bin").unlink()
    with pytest.raises(DataError, match=r"shard_00001\.bin: shard listed in .* is missing"):
        load_tokens(broken)
    shutil.copy(out / "train/shard_00001.bin", broken / "train/shard_00001.bin")
    with open(broken / "train/shard_00002.bin", "ab") as f:
        f.write(b"\0\0")
    with pytest.raises(DataError, match=r"shard_00002\.bin: \d+ bytes, but the manifest says"):
        load_tokens(broken)
    shutil.copy(out / "train/shard_00002.bin", broken / "train/shard_00002.bin")
    data = bytearray((broken / "train/shard_00000.bin").read_bytes())
    data[0] ^= 1
    (broken / "train/shard_00000.bin").write_bytes(bytes(data))
    load_tokens(broken)  # sizes agree: only verify=True reads the bytes
    with pytest.raises(DataError, match=r"shard_00000\.bin: sha256 does not match"):
        load_tokens(broken, verify=True)
    with pytest.raises(DataError, match=r"no 'test' split \(has: train, validation\)"):
        load_tokens(out, "test")
    with pytest.raises(DataError, match="no shard manifest"):
        load_tokens(tmp_path)


def test_format_1_folders_are_read_as_train(setup, tmp_path):
    """A folder as written before the split (one flat list of shards) still loads."""
    _, _, _, out = setup
    tokens = np.asarray(load_tokens(out))
    old = tmp_path / "old"
    old.mkdir()
    halves = [tokens[:700], tokens[700:]]
    shards = []
    for i, part in enumerate(halves):
        part.astype("<u2").tofile(old / f"shard_{i:05d}.bin")
        shards.append({"file": f"shard_{i:05d}.bin", "tokens": int(part.size), "docs": 0})
    legacy = {
        "tokenizer": "somewhere",
        "dtype": "uint16",
        "vocab_size": 600,
        "eos_id": 2,
        "total_tokens": int(tokens.size),
        "total_docs": 0,
        "shards": shards,
    }
    (old / "manifest.json").write_text(json.dumps(legacy))
    assert np.array_equal(np.asarray(load_tokens(old)), tokens)
    assert np.array_equal(read_block(old, 1, 1000), tokens[1000:2000])
    with pytest.raises(DataError, match="format-1 shard folder has no 'validation' split"):
        load_tokens(old, "validation")


def test_no_validation_split(setup, tmp_path):
    tmp, texts, tok, _ = setup
    out = tmp_path / "noval"
    m = write_shards(
        str(tmp / "selected.parquet"),
        str(tok),
        str(out),
        tokens_per_shard=5000,
        validation_fraction=0.0,
    )
    assert m["splits"]["validation"]["total_docs"] == 0 and m["total_docs"] == len(texts)
    assert m["splits"]["validation"]["shards"] == []
    with pytest.raises(DataError, match=r"validation split holds no tokens.*validation_fraction"):
        load_tokens(out, "validation")
    with pytest.raises(DataError, match=r"corpus\.shards\.validation_fraction"):
        write_shards(
            str(tmp / "selected.parquet"), str(tok), str(tmp_path / "x"), validation_fraction=1.0
        )
    assert not (tmp_path / "x").exists()


def test_token_dtype():
    assert token_dtype(65535) == np.uint16 and token_dtype(65536) == np.uint32


def test_large_vocab_uses_uint32(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "</s>": 1, **{f"w{i}": i + 2 for i in range(70_000)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    folder = tmp_path / "big"
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "special_tokens_map.json").write_text(json.dumps({"eos_token": {"content": "</s>"}}))
    pl.DataFrame(
        {"id": ["a", "b"], "text": ["w69999 w5", "w70000"], "source": ["x", "x"]}
    ).write_parquet(tmp_path / "s.parquet")
    write_shards(
        str(tmp_path / "s.parquet"),
        str(folder),
        str(tmp_path / "out"),
        tokens_per_shard=1000,
        validation_fraction=0.0,
    )
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["dtype"] == "uint32" and m["vocab_size"] == 70_002
    assert m["tokenizer"]["vocab_size"] == 70_002
    assert (tmp_path / "out/train/shard_00000.bin").stat().st_size == 4 * 5
    assert load_tokens(tmp_path / "out").tolist() == [70_001, 7, 1, 0, 1]
    assert read_block(tmp_path / "out", 1, 2).tolist() == [1, 0]


def test_bad_inputs(setup, tmp_path):
    tmp, _, tok, _ = setup
    with pytest.raises(DataError, match="tokenizer folder not found"):
        write_shards(str(tmp / "selected.parquet"), str(tmp_path / "nope"), str(tmp_path / "o"))
    pl.DataFrame({"text": []}, schema={"text": pl.String}).write_parquet(tmp_path / "e.parquet")
    with pytest.raises(DataError, match=r"e\.parquet: no 'id' column"):
        write_shards(str(tmp_path / "e.parquet"), str(tok), str(tmp_path / "o"))
    pl.DataFrame({"id": ["a", "a"], "source": ["s", "s"], "text": ["x", "y"]}).write_parquet(
        tmp_path / "d.parquet"
    )
    with pytest.raises(DataError, match=r"d\.parquet: duplicate document ids"):
        write_shards(str(tmp_path / "d.parquet"), str(tok), str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_save_pretrained_tokenizer_folder(setup, tmp_path):
    """A folder as the pipeline's base models save it (bos prepended by the post-processor)."""
    from tokenizers import Tokenizer, processors
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tmp, texts, tok_dir, _ = setup
    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    hf.save_pretrained(tmp_path / "base")
    write_shards(
        str(tmp / "selected.parquet"),
        str(tmp_path / "base"),
        str(tmp_path / "out"),
        validation_fraction=0.0,
    )
    tokens = load_tokens(tmp_path / "out")
    assert 1 not in set(tokens.tolist())  # no <s>: documents are separated by eos only
    first = next(split_documents(tokens, 2))
    auto = AutoTokenizer.from_pretrained(tmp_path / "base")
    assert first.tolist() == auto(texts[0], add_special_tokens=False)["input_ids"]
    assert decode_documents(tmp_path / "out", limit=5) == texts[:5]


def test_token_stream_slices_across_shard_boundaries():
    from domainllm.corpus.shards import TokenStream

    parts = [
        np.arange(0, 5, dtype=np.uint16),
        np.arange(5, 7, dtype=np.uint16),
        np.arange(7, 12, dtype=np.uint16),
    ]
    stream = TokenStream(parts)
    whole = np.arange(12, dtype=np.uint16)
    assert len(stream) == 12
    for a, b in [(0, 12), (3, 9), (5, 7), (4, 5), (6, 11), (11, 12), (8, 8)]:
        assert np.array_equal(stream[a:b], whole[a:b]), (a, b)
    assert stream[6] == 6 and stream[-1] == 11
    assert np.array_equal(np.asarray(stream), whole)
