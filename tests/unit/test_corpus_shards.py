"""Tests of domainllm.corpus.shards: writing, reading and decoding token shards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from domainllm.corpus.clean import normalize_text
from domainllm.corpus.shards import decode_documents, load_tokens, split_documents, write_shards
from domainllm.errors import DataError

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "samples"


def sentences(n: int) -> list[str]:
    items = json.loads(
        (SAMPLES / "stockmark_ner_wikipedia" / "ner.json").read_text(encoding="utf-8")
    )
    return [normalize_text(d["text"]) for d in items[:n]]


def save_bpe(folder: Path, texts: list[str], vocab_size: int = 600) -> Path:
    """A byte-level BPE tokenizer folder like the ones the pipeline builds."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    folder.mkdir(parents=True)
    tok.save(str(folder / "tokenizer.json"))
    config = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shards")
    texts = sentences(300)
    texts.append("English text, with spaces  and\nnewlines: 2024年度の売上高は1,234億円。")
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
    write_shards(str(tmp / "selected.parquet"), str(tok), str(out), tokens_per_shard=1000)
    return tmp, texts, tok, out


def test_manifest_and_files(setup):
    tmp, texts, tok, out = setup
    m = json.loads((out / "manifest.json").read_text())
    assert m["tokenizer"] == str(tok) and m["dtype"] == "uint16" and m["vocab_size"] == 600
    assert m["eos_id"] == 2 and m["total_docs"] == len(texts)
    assert len(m["shards"]) > 3
    assert [s["file"] for s in m["shards"]] == [
        f"shard_{i:05d}.bin" for i in range(len(m["shards"]))
    ]
    assert sum(s["tokens"] for s in m["shards"]) == m["total_tokens"]
    assert sum(s["docs"] for s in m["shards"]) == m["total_docs"]
    assert all(s["tokens"] >= 1000 for s in m["shards"][:-1])
    assert {k: v["docs"] for k, v in m["sources"].items()} == {"a": 150, "b": 150, "c": 1}
    assert sum(v["tokens"] for v in m["sources"].values()) == m["total_tokens"]
    for s in m["shards"]:
        assert (out / s["file"]).stat().st_size == 2 * s["tokens"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["manifest.json"] + [s["file"] for s in m["shards"]]
    )


def test_round_trip(setup):
    tmp, texts, tok, out = setup
    tokens = load_tokens(out, verify=True)
    m = json.loads((out / "manifest.json").read_text())
    assert tokens.ndim == 1 and tokens.dtype == np.uint16 and len(tokens) == m["total_tokens"]
    assert int((np.asarray(tokens) == m["eos_id"]).sum()) == len(texts)
    assert tokens[-1] == m["eos_id"]
    docs = [d.tolist() for d in split_documents(tokens, m["eos_id"])]
    assert len(docs) == len(texts)
    assert decode_documents(out) == texts  # byte-level BPE: exact, in selection order
    single = tmp / "single"
    write_shards(str(tmp / "selected.parquet"), str(tok), str(single), tokens_per_shard=10**7)
    one = load_tokens(single)
    assert isinstance(one, np.memmap) and np.array_equal(np.asarray(one), np.asarray(tokens))


def test_load_tokens_validates(setup, tmp_path):
    import shutil

    _, _, _, out = setup
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "shard_00001.bin").unlink()
    with pytest.raises(DataError, match=r"shard_00001\.bin: shard listed in .* is missing"):
        load_tokens(broken)
    shutil.copy(out / "shard_00001.bin", broken / "shard_00001.bin")
    with open(broken / "shard_00002.bin", "ab") as f:
        f.write(b"\0\0")
    with pytest.raises(DataError, match=r"shard_00002\.bin: \d+ bytes, but the manifest says"):
        load_tokens(broken)
    shutil.copy(out / "shard_00002.bin", broken / "shard_00002.bin")
    data = bytearray((broken / "shard_00000.bin").read_bytes())
    data[0] ^= 1
    (broken / "shard_00000.bin").write_bytes(bytes(data))
    load_tokens(broken)  # sizes agree: only verify=True reads the bytes
    with pytest.raises(DataError, match=r"shard_00000\.bin: sha256 does not match"):
        load_tokens(broken, verify=True)
    with pytest.raises(DataError, match="no shard manifest"):
        load_tokens(tmp_path)


def test_large_vocab_uses_uint32(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "</s>": 1, **{f"w{i}": i + 2 for i in range(70_000)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    folder = tmp_path / "big"
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "special_tokens_map.json").write_text(json.dumps({"eos_token": {"content": "</s>"}}))
    pl.DataFrame({"text": ["w69999 w5", "w70000"], "source": ["x", "x"]}).write_parquet(
        tmp_path / "s.parquet"
    )
    write_shards(
        str(tmp_path / "s.parquet"), str(folder), str(tmp_path / "out"), tokens_per_shard=1000
    )
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["dtype"] == "uint32" and m["vocab_size"] == 70_002
    assert load_tokens(tmp_path / "out").tolist() == [70_001, 7, 1, 0, 1]


def test_bad_inputs(setup, tmp_path):
    tmp, _, tok, _ = setup
    with pytest.raises(DataError, match="tokenizer folder not found"):
        write_shards(str(tmp / "selected.parquet"), str(tmp_path / "nope"), str(tmp_path / "o"))
    pl.DataFrame({"text": []}, schema={"text": pl.String}).write_parquet(tmp_path / "e.parquet")
    with pytest.raises(DataError, match=r"e\.parquet: no 'source' column"):
        write_shards(str(tmp_path / "e.parquet"), str(tok), str(tmp_path / "o"))
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
    write_shards(str(tmp / "selected.parquet"), str(tmp_path / "base"), str(tmp_path / "out"))
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
