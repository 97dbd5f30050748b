"""Instruction tuning: answer-only labels, padding, truncation, training and resumption."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from domainllm.errors import DataError  # noqa: E402
from domainllm.train.chat import CHAT_TEMPLATE, format_prompt  # noqa: E402
from domainllm.train.sft import IGNORE_INDEX, AnswerOnlyCollator, build_example  # noqa: E402
from tests.unit._tiny_lm import (  # noqa: E402
    build_model,
    elyza_items,
    prepare_sample_instructions,
    quick_train,
    sample_texts,
)


def build_base(path: Path, *, chat_template: bool = True) -> Path:
    """A byte-level BPE tokenizer trained on real text and a tiny random Llama (hidden 32)."""
    texts = sample_texts(60) + [x["output"] for x in elyza_items(None)]
    return build_model(
        path, texts=texts, vocab_size=500, chat_template=chat_template, hidden=32, heads=2,
        intermediate=64, max_position_embeddings=256,
    )  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("sft")
    base = build_base(root / "base")
    prepare_sample_instructions(root / "sft.parquet", root / "eval.parquet", seed=3)
    return root, base, root / "sft.parquet"


@pytest.fixture(scope="module")
def tokenizer(world):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(world[1])


def test_labels_are_masked_exactly_on_prompt_and_padding(world, tokenizer):
    rows = pl.read_parquet(world[2]).head(4).to_dicts()
    examples = [build_example(tokenizer, r["instruction"], r["output"], 10_000) for r in rows]
    batch = AnswerOnlyCollator(tokenizer.pad_token_id)(
        [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples]
    )
    lengths = [len(e["input_ids"]) for e in examples]
    assert batch["input_ids"].shape == (4, max(lengths)) and len(set(lengths)) > 1
    for i, (r, e) in enumerate(zip(rows, examples, strict=True)):
        labels, ids, mask = batch["labels"][i], batch["input_ids"][i], batch["attention_mask"][i]
        k, p = lengths[i], e["prompt_len"]
        assert (labels[:p] == IGNORE_INDEX).all()  # prompt
        assert (labels[k:] == IGNORE_INDEX).all() and (mask[k:] == 0).all()  # padding
        assert (ids[k:] == tokenizer.pad_token_id).all() and (mask[:k] == 1).all()
        kept = labels[labels != IGNORE_INDEX].tolist()
        assert kept == ids[p:k].tolist()  # answer tokens supervise themselves
        assert tokenizer.decode(kept) == r["output"] + tokenizer.eos_token
        assert tokenizer.decode(ids[:p].tolist()) == format_prompt(tokenizer, r["instruction"])
        assert format_prompt(tokenizer, r["instruction"]).startswith("<s>### ユーザー:\n")


def test_truncation_keeps_the_prompt_header_and_drops_eos(tokenizer):
    long_instruction = "売上高が増加しました。" * 60
    long_answer = "営業利益は減少しました。" * 60
    ex = build_example(tokenizer, long_instruction, long_answer, 64)
    assert ex["truncated"] and len(ex["input_ids"]) == 64
    prompt = tokenizer.decode(ex["input_ids"][: ex["prompt_len"]])
    assert prompt.startswith("<s>### ユーザー:\n売上高") and prompt.endswith("### アシスタント:\n")
    assert ex["prompt_len"] <= 32  # the prompt keeps at most half when the answer is long
    assert ex["labels"][-1] != tokenizer.eos_token_id  # a cut answer does not "end"
    short = build_example(tokenizer, "売上高は？", "増加しました。", 64)
    assert not short["truncated"] and short["labels"][-1] == tokenizer.eos_token_id


def run(world, name, base=None, data=None, **kw):
    from domainllm.train.sft import train_sft

    root, world_base, world_data = world
    kw = {"max_len": 96, "seed": 5, **kw}
    metrics, out, _ = quick_train(
        train_sft, root, name, base or world_base, data or world_data, **kw
    )
    return metrics, out


def test_sft_learns_and_saves_a_chat_model(world):
    from domainllm.models.loading import load_causal_lm

    metrics, out = run(world, "a")
    losses = [h["loss"] for h in metrics["loss_history"]]
    assert metrics["steps"] == 20 and metrics["resumed_from"] is None
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.5, losses
    assert metrics["examples"] == pl.read_parquet(world[2]).height
    assert 0 < metrics["tokens_seen"] <= 20 * 4 * 96  # non-padding tokens only
    assert (out / "loss_curve.png").is_file() and (out / "model.safetensors").is_file()
    assert json.loads((out / "train_metrics.json").read_text())["stage"] == "sft"
    assert sorted(p.name for p in Path(world[0] / "a-ckpt").glob("checkpoint-*")) == [
        "checkpoint-10",
        "checkpoint-20",
    ]
    model, tok = load_causal_lm(out)
    prompt = format_prompt(tok, "伊勢神宮は何県？")
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        gen = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert gen.shape[1] > ids.shape[1]


def test_sft_resumes_from_the_newest_checkpoint(world):
    first, _ = run(world, "r", max_steps=6, save_steps=3)
    assert first["steps"] == 6
    second, out = run(world, "r", max_steps=10, save_steps=3)
    assert second["resumed_from"] == str(world[0] / "r-ckpt" / "checkpoint-6")
    assert second["steps"] == 10
    assert [h["step"] for h in second["loss_history"]][-1] == 10


def test_chat_template_is_set_when_the_base_has_none(world, tmp_path):
    from transformers import AutoTokenizer

    bare = build_base(tmp_path / "bare", chat_template=False)
    assert not AutoTokenizer.from_pretrained(bare).chat_template
    _, out = run(world, "t", base=bare, max_steps=2, save_steps=2)
    assert AutoTokenizer.from_pretrained(out).chat_template == CHAT_TEMPLATE


def test_bad_sft_data_is_refused(world, tmp_path):
    bad = tmp_path / "bad.parquet"
    pl.DataFrame({"id": ["a"], "prompt": ["q"]}).write_parquet(bad)
    with pytest.raises(DataError, match="bad.parquet: missing column"):
        run(world, "refused", data=bad, max_steps=1, batch_size=1, max_len=32)
    assert not (world[0] / "refused").exists()
