"""SentencePiece tokenizers, as many real bases ship them: a ``tokenizer.model`` (or
DeBERTa-v3's ``spm.model``) and no ``tokenizer.json``.

A Unigram model is trained here on the shipped chABSA text with a character
coverage below one, so rare characters are unknown; every count below is checked
against the sentencepiece library reading the same file.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from domainllm.errors import DataError
from domainllm.models.loading import load_causal_lm
from domainllm.models.tokenizer import load_tokenizer
from tests.unit._tiny_lm import chabsa_documents, sample_texts

TRAIN_DOCS = 40


def train_spm(path: Path, *, model_type: str, byte_fallback: bool, normalization: str) -> Path:
    """A SentencePiece model of the first chABSA reports, leaving rare characters out."""
    import sentencepiece as spm

    lines = [s["sentence"] for doc in chabsa_documents(TRAIN_DOCS) for s in doc["sentences"]]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=buf,
        vocab_size=1200,
        model_type=model_type,
        character_coverage=0.98,
        byte_fallback=byte_fallback,
        normalization_rule_name=normalization,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    path.write_bytes(buf.getvalue())
    return path


def heldout() -> list[str]:
    """Reports the tokenizer never saw."""
    return sample_texts(TRAIN_DOCS + 8)[TRAIN_DOCS:]


def unknown_chars(processor, texts: list[str]) -> tuple[int, int]:
    """(characters sentencepiece has no piece for, all characters), spaces aside."""
    # normalize() gives the text as the model reads it: spaces as "▁", NFKC where set.
    chars = [c for t in texts for c in processor.normalize(t) if c != "▁" and not c.isspace()]
    unk = processor.unk_id()
    return sum(processor.piece_to_id(c) == unk for c in chars), len(chars)


def llama_folder(path: Path, *, byte_fallback: bool):
    """A Llama-2-style base: tokenizer.model (BPE, no normaliser), config, safetensors."""
    import sentencepiece as spm
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path.mkdir()
    model_file = train_spm(
        path / "tokenizer.model",
        model_type="bpe",
        byte_fallback=byte_fallback,
        normalization="identity",
    )
    special = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}
    (path / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, **special})
    )
    processor = spm.SentencePieceProcessor(model_file=str(model_file))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=processor.get_piece_size(),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        bos_token_id=1,
        eos_token_id=2,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    assert not (path / "tokenizer.json").exists()
    return path, processor


@pytest.fixture(scope="module")
def llama_byte_fallback(tmp_path_factory):
    return llama_folder(tmp_path_factory.mktemp("base") / "spm-llama", byte_fallback=True)


def test_a_llama_sentencepiece_base_encodes_as_sentencepiece_does(llama_byte_fallback):
    from domainllm.models.score import tokenizer_efficiency

    folder, processor = llama_byte_fallback
    model, tok = load_causal_lm(folder)
    texts = heldout()
    assert unknown_chars(processor, texts)[0] > 0  # rare characters are byte pieces here
    assert tok(texts, add_special_tokens=False)["input_ids"] == processor.encode(texts)
    assert tok(texts[0])["input_ids"][0] == processor.bos_id()
    assert tok.pad_token_id == processor.eos_id()  # no pad token: eos pads, as for any base
    assert model.config.vocab_size == processor.get_piece_size() == len(tok)
    m = tokenizer_efficiency(tok, texts)
    assert m["unk_rate"] == 0 and m["lost_char_rate"] == 0


def llama_tokenizers(tmp_path):
    """transformers' reading and ours of a Llama BPE tokenizer.model without byte fallback."""
    from transformers import AutoTokenizer

    folder, processor = llama_folder(tmp_path / "spm-llama", byte_fallback=False)
    return AutoTokenizer.from_pretrained(folder), load_tokenizer(folder), processor, folder


def test_lost_characters_count_what_transformers_drops_without_byte_fallback(tmp_path):
    """transformers' Llama class drops the characters sentencepiece maps to <unk>."""
    from domainllm.models.score import tokenizer_efficiency

    plain, _, processor, _ = llama_tokenizers(tmp_path)
    texts = heldout()
    n_unk, n_chars = unknown_chars(processor, texts)
    assert n_unk > 0
    unk = processor.unk_id()
    dropped = [[i for i in ids if i != unk] for ids in processor.encode(texts)]
    assert plain(texts, add_special_tokens=False)["input_ids"] == dropped
    m = tokenizer_efficiency(plain, texts)
    assert m["unk_rate"] == 0  # nothing to count ...
    assert m["lost_char_rate"] == pytest.approx(n_unk / n_chars)  # ... but this is what is lost


def test_the_loader_puts_back_unknown_tokens_and_keeps_them_when_copied(tmp_path, caplog):
    from domainllm.models.build import build_base
    from domainllm.models.score import tokenizer_efficiency

    with caplog.at_level("WARNING", logger="domainllm.models.tokenizer"):
        _, tok, processor, folder = llama_tokenizers(tmp_path)
    assert "unknown characters as <unk>" in caplog.text
    texts = heldout()
    reference = processor.encode(texts)
    assert tok(texts, add_special_tokens=False)["input_ids"] == reference
    m = tokenizer_efficiency(tok, texts)
    n_tokens = sum(map(len, reference))
    assert m["unk_rate"] == pytest.approx(sum(ids.count(0) for ids in reference) / n_tokens)
    n_unk, n_chars = unknown_chars(processor, texts)
    assert m["lost_char_rate"] == pytest.approx(n_unk / n_chars)
    # The candidate folder's tokenizer.json is read as written by any loader (vLLM's,
    # a user's AutoTokenizer), not rebuilt by the Llama class with byte fallback again.
    out = tmp_path / "candidate"
    build_base(str(out), corpus=None, spec=None, source=str(folder))
    assert json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"] == (
        "TokenizersBackend"
    )
    from transformers import AutoTokenizer

    for copied in (load_tokenizer(out), AutoTokenizer.from_pretrained(out)):
        assert copied(texts, add_special_tokens=False)["input_ids"] == reference
        assert copied.chat_template and copied.eos_token == "</s>"
        assert copied(texts[0])["input_ids"][0] == processor.bos_id()


def test_a_copied_sentencepiece_candidate_keeps_its_encoding(llama_byte_fallback, tmp_path):
    from domainllm.models.build import build_base

    folder, processor = llama_byte_fallback
    out = tmp_path / "candidate"
    build_base(str(out), corpus=None, spec=None, source=str(folder))
    tok = load_tokenizer(out)
    texts = heldout()
    assert tok(texts, add_special_tokens=False)["input_ids"] == processor.encode(texts)
    assert tok.chat_template  # the pipeline's template, added for instruction tuning
    assert json.loads((out / "build.json").read_text())["source"] == str(folder)


def test_a_deberta_v3_tokenizer_keeps_its_nfkc(tmp_path, caplog):
    """DeBERTa-v3 (the real configs' evaluator): a Unigram spm.model with NFKC.

    transformers 5's DeBERTa-v2 class normalises by NFC instead of the model's NFKC,
    so full-width letters and digits, common in Japanese filings, become unknown
    tokens; it does the same to a tokenizer.json that has the model's normaliser.
    The loader puts the normaliser back, and the encodings are sentencepiece's.
    """
    import sentencepiece as spm
    from transformers import AutoTokenizer

    from domainllm.models.score import tokenizer_efficiency

    folder = tmp_path / "deberta"
    folder.mkdir()
    model_file = train_spm(
        folder / "spm.model", model_type="unigram", byte_fallback=False, normalization="nmt_nfkc"
    )
    processor = spm.SentencePieceProcessor(model_file=str(model_file))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "DebertaV2Tokenizer", "unk_token": "<unk>"})
    )
    texts = heldout()
    reference = processor.encode(texts)
    plain = AutoTokenizer.from_pretrained(folder)
    assert plain(texts, add_special_tokens=False)["input_ids"] != reference
    with caplog.at_level("WARNING", logger="domainllm.models.tokenizer"):
        tok = load_tokenizer(folder)
    assert "nmt_nfkc normalisation" in caplog.text and "DebertaV2Tokenizer" in caplog.text
    assert tok(texts, add_special_tokens=False)["input_ids"] == reference
    n_unk, n_chars = unknown_chars(processor, texts)
    lost = tokenizer_efficiency(plain, texts)["lost_char_rate"]
    assert tokenizer_efficiency(tok, texts)["lost_char_rate"] == pytest.approx(n_unk / n_chars)
    assert lost > n_unk / n_chars  # what the class's NFC costs
    # Saved, it is read with its normaliser by any loader.
    saved = tmp_path / "saved"
    tok.save_pretrained(saved)

    def ids(tokenizer):
        return tokenizer(texts, add_special_tokens=False)["input_ids"]

    assert ids(AutoTokenizer.from_pretrained(saved)) == reference
    # A hub model's tokenizer.json with the normaliser, under the DeBERTa-v2 class (as
    # converted by transformers 4): the class drops it, the loader reads the file.
    config = json.loads((saved / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "DebertaV2Tokenizer"
    (saved / "tokenizer_config.json").write_text(json.dumps(config))
    assert ids(AutoTokenizer.from_pretrained(saved)) != reference
    caplog.clear()
    with caplog.at_level("WARNING", logger="domainllm.models.tokenizer"):
        as_file = load_tokenizer(saved)
    assert "replaces the normalizer of tokenizer.json; using it as written" in caplog.text
    assert ids(as_file) == reference
    # With the model's own code allowed, its class is the definition: nothing is replaced.
    assert ids(load_tokenizer(saved, trust_remote_code=True)) != reference


def test_a_tokenizer_that_encodes_to_nothing_is_refused(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    # What transformers builds from a tokenizer.model it cannot read: an empty vocabulary.
    empty = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()), eos_token="</s>")
    empty.save_pretrained(tmp_path)
    with pytest.raises(DataError, match=f"{tmp_path}: the tokenizer encodes text to no tokens"):
        load_tokenizer(tmp_path)
