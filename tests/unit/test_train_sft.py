"""Instruction tuning: answer-only labels, batching without cross-talk, LoRA, eval loss."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from domainllm.errors import DataError, PipelineError  # noqa: E402
from domainllm.train.chat import CHAT_TEMPLATE, format_prompt  # noqa: E402
from domainllm.train.sft import (  # noqa: E402
    IGNORE_INDEX,
    add_stop_token,
    assistant_turn,
    build_example,
)
from tests.unit._tiny_lm import (  # noqa: E402
    build_model,
    elyza_items,
    prepare_sample_instructions,
    quick_train,
    sample_texts,
    write_eval_prompts,
    write_shards,
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


def collate(tokenizer, examples, *, padding_free=False):
    """TRL's collator (the one SFTTrainer uses) over pre-tokenised examples."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    collator = DataCollatorForLanguageModeling(
        pad_token_id=tokenizer.pad_token_id, padding_free=padding_free
    )
    return collator([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples])


def test_labels_are_masked_exactly_on_prompt_and_padding(world, tokenizer):
    rows = pl.read_parquet(world[2]).head(4).to_dicts()
    examples = [build_example(tokenizer, r["instruction"], r["output"], 10_000) for r in rows]
    batch = collate(tokenizer, examples)
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
        # Token by token: every answer position is supervised, every prompt position is not.
        for t in range(k):
            assert (labels[t].item() == IGNORE_INDEX) == (t < p), (i, t)

    # Padding-free: one row, positions restart per example, and each example's first
    # label is masked, so no token is predicted across a boundary.
    flat = collate(tokenizer, examples, padding_free=True)
    assert flat["input_ids"].shape == (1, sum(lengths)) and "attention_mask" not in flat
    starts = np.cumsum([0, *lengths[:-1]])
    assert torch.equal(flat["position_ids"][0], torch.cat([torch.arange(n) for n in lengths]))
    assert flat["labels"][0][starts].eq(IGNORE_INDEX).all()
    assert torch.equal(flat["labels"][0], torch.cat([torch.tensor(e["labels"]) for e in examples]))


def test_special_token_strings_in_an_answer_are_text(tokenizer):
    """A product log quoting '</s>' must not teach the model to stop mid-answer."""
    answer = "旧価格は<s>100円</s>です。</s>の後も続きます。"
    e = build_example(tokenizer, "価格を教えて", answer, 10_000)
    kept = [t for t in e["labels"] if t != IGNORE_INDEX]
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    assert kept.count(eos) == 1 and kept[-1] == eos  # only the end of the turn
    assert bos not in kept
    assert tokenizer.decode(kept) == answer + tokenizer.eos_token


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
    n = pl.read_parquet(world[2]).height
    assert metrics["eval_examples"] == round(0.1 * n) and metrics["examples"] == n - round(0.1 * n)
    # Held-out loss at each checkpoint and at the end; it falls as the model learns.
    assert [e["step"] for e in metrics["eval_history"]] == [10, 20]
    assert metrics["eval_loss"] == metrics["eval_history"][-1]["loss"]
    assert metrics["eval_history"][1]["loss"] < metrics["eval_history"][0]["loss"]
    assert metrics["batching"] == "padded" and metrics["lora"] is None
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


def token_nll(model, input_ids, labels, position_ids=None):
    """Next-token negative log-likelihood at each supervised position (0 elsewhere).

    Without a KV cache, as in training: transformers reads packed boundaries from the
    position ids only when there is no cache (TRL's compute_loss passes use_cache=False).
    """
    with torch.no_grad():
        out = model(input_ids=input_ids, position_ids=position_ids, use_cache=False)
        logits = out.logits[0, :-1]
    target = labels[0, 1:]
    nll = torch.nn.functional.cross_entropy(logits.float(), target.clamp(min=0), reduction="none")
    return torch.where(target == IGNORE_INDEX, torch.zeros_like(nll), nll)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_rows_give_each_example_its_unpacked_loss(world, tokenizer, attn):
    """Concatenated examples with restarting positions see nothing of each other."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl.data_utils import pack_dataset

    model = AutoModelForCausalLM.from_pretrained(world[1], attn_implementation=attn).eval()
    rows = pl.read_parquet(world[2]).head(6).to_dicts()
    examples = [build_example(tokenizer, r["instruction"], r["output"], 96) for r in rows]
    alone = [
        token_nll(model, torch.tensor([e["input_ids"]]), torch.tensor([e["labels"]])).sum()
        for e in examples
    ]

    flat = collate(tokenizer, examples, padding_free=True)
    per_token = token_nll(model, flat["input_ids"], flat["labels"], flat["position_ids"])
    bounds = np.cumsum([0] + [len(e["input_ids"]) for e in examples])
    packed = [per_token[a : b - 1].sum() for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    assert torch.allclose(torch.stack(packed), torch.stack(alone), rtol=1e-4, atol=1e-4)
    # The model's own loss over the packed row is the token-weighted mean of the examples'.
    n_tokens = sum(sum(t != IGNORE_INDEX for t in e["labels"]) for e in examples)
    with torch.no_grad():
        inputs = {k: flat[k] for k in ("input_ids", "labels", "position_ids")}
        loss = model(**inputs, use_cache=False).loss
    assert loss.item() == pytest.approx(torch.stack(alone).sum().item() / n_tokens, rel=1e-4)
    # Without the restarting positions the same row mixes examples: the check can fail.
    mixed = token_nll(model, flat["input_ids"], flat["labels"]).sum()
    assert abs(mixed - torch.stack(alone).sum()) > 1e-2

    # TRL's best-fit-decreasing packing into rows of 200 tokens, as batching="packed" runs.
    ds = Dataset.from_dict(
        {"input_ids": [e["input_ids"] for e in examples], "labels": [e["labels"] for e in examples]}
    )
    rows_packed = pack_dataset(ds, 200, "bfd")
    assert len(rows_packed) < len(examples) and max(map(len, rows_packed["input_ids"])) <= 200
    batch = collate_packed(tokenizer, rows_packed)
    total = token_nll(model, batch["input_ids"], batch["labels"], batch["position_ids"]).sum()
    assert total.item() == pytest.approx(torch.stack(alone).sum().item(), rel=1e-4)


def collate_packed(tokenizer, packed):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    collator = DataCollatorForLanguageModeling(tokenizer.pad_token_id, padding_free=True)
    return collator([dict(r) for r in packed])


@pytest.mark.parametrize("batching", ["packed", "padding_free"])
def test_sft_trains_with_padding_free_batches(world, batching):
    metrics, out = run(world, batching, batching=batching, max_steps=6, save_steps=3)
    losses = [h["loss"] for h in metrics["loss_history"]]
    assert metrics["steps"] == 6 and metrics["batching"] == batching
    assert losses[-1] < losses[0] and [e["step"] for e in metrics["eval_history"]] == [3, 6]
    assert (out / "model.safetensors").is_file()


def test_lora_is_merged_into_a_plain_model_and_reruns_from_its_checkpoint(world):
    from peft import PeftModel
    from safetensors.torch import load_file

    from domainllm.models.loading import load_causal_lm

    lora = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    metrics, out = run(world, "lora", lora=lora, max_steps=6, save_steps=3)
    assert metrics["lora"] == lora and metrics["steps"] == 6
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert not list(out.glob("adapter_*"))  # the top folder is a plain model
    base = load_file(world[1] / "model.safetensors")
    merged = load_file(out / "model.safetensors")
    assert merged.keys() == base.keys()
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    assert changed and all(("q_proj" in k or "v_proj" in k) for k in changed), changed

    # Later stages load it like any model folder; it equals base + adapter.
    model, tok = load_causal_lm(out)
    base_model, _ = load_causal_lm(world[1])
    with_adapter = PeftModel.from_pretrained(base_model, str(out / "adapter")).eval()
    ids = tok(format_prompt(tok, "売上高は？"), add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        a = model(**ids).logits
        b = with_adapter(**ids).logits
    assert torch.allclose(a, b, atol=1e-5)

    # A rerun after the run finished merges again from the final (adapter) checkpoint.
    import shutil

    shutil.rmtree(out)
    again, out2 = run(world, "lora", lora=lora, max_steps=6, save_steps=3)
    assert again["resumed_from"] == str(world[0] / "lora-ckpt" / "checkpoint-6")
    assert again["eval_loss"] == metrics["eval_loss"]
    again_weights = load_file(out2 / "model.safetensors")
    assert all(torch.allclose(again_weights[k], merged[k], atol=1e-6) for k in merged)


def test_lora_output_goes_through_quantisation_and_generation(world, tmp_path):
    pytest.importorskip("llmcompressor")
    from domainllm.infer.generation import generate
    from domainllm.quantize.gptq import quantize_gptq

    lora = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}
    _, out = run(world, "lora-q", lora=lora, max_steps=4, save_steps=4)
    shards = write_shards(out, tmp_path / "shards", sample_texts(20))
    quantize_gptq(
        str(out), str(shards / "manifest.json"), str(tmp_path / "q"), group_size=32,
        calibration_samples=8, calibration_seq_len=32, eval_windows=4, seed=1,
    )  # fmt: skip
    write_eval_prompts(tmp_path / "prompts.parquet", 2)
    for folder in (out, tmp_path / "q"):
        generate(
            str(folder), str(tmp_path / "prompts.parquet"), str(tmp_path / "g.parquet"),
            max_new_tokens=3, batch_size=2,
        )  # fmt: skip
        gens = pl.read_parquet(tmp_path / "g.parquet")
        assert gens.height == 2 and (gens["output_tokens"] > 0).all()


MISTRAL_STYLE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }}"
    " [/INST]{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)


def test_chat_template_from_config_formats_training_and_is_saved(world, tmp_path):
    from transformers import AutoTokenizer

    template = tmp_path / "mistral.jinja"
    template.write_text(MISTRAL_STYLE, encoding="utf-8")
    metrics, out = run(world, "tpl", chat_template=str(template), max_steps=2, save_steps=2)
    saved = AutoTokenizer.from_pretrained(out)
    assert saved.chat_template == MISTRAL_STYLE and metrics["chat_template"] == str(template)
    ex = build_example(saved, "売上高は？", "増加しました。", 64)
    prompt = saved.decode(ex["input_ids"][: ex["prompt_len"]])
    assert prompt == "<s>[INST] 売上高は？ [/INST]"
    assert saved.decode([t for t in ex["labels"] if t != IGNORE_INDEX]) == "増加しました。</s>"
    with pytest.raises(DataError, match="chat template file"):
        run(world, "tpl-missing", chat_template=str(tmp_path / "none.jinja"), max_steps=1)


def test_template_end_of_turn_token_is_trained_and_stops_generation(tokenizer, tmp_path):
    import copy

    from transformers import GenerationConfig

    tok = copy.deepcopy(tokenizer)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_end|>"]})
    end = tok.convert_tokens_to_ids("<|im_end|>")
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    turn = assistant_turn(tok)
    assert turn.suffix_ids == (end,) and turn.prefix == "" and turn.stop_id == end
    ex = build_example(tok, "売上高は？", "増加。", 64, turn)
    assert ex["labels"][-1] == end and tok.eos_token_id not in ex["input_ids"]
    # A template that closes the turn with plain text gets eos after it.
    tok.chat_template = tok.chat_template.replace("<|im_end|>", "[END]")
    plain = assistant_turn(tok)
    assert tok.decode(plain.suffix_ids) == "[END]</s>" and plain.stop_id == tok.eos_token_id

    GenerationConfig(eos_token_id=tok.eos_token_id).save_pretrained(tmp_path)
    add_stop_token(tmp_path, end)
    add_stop_token(tmp_path, end)  # idempotent
    assert GenerationConfig.from_pretrained(tmp_path).eos_token_id == [tok.eos_token_id, end]

    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}[reply]"
    with pytest.raises(PipelineError, match="generation prompt"):
        assistant_turn(tok)


def test_bad_sft_settings_are_refused(world):
    with pytest.raises(PipelineError, match="sft.batching"):
        run(world, "bad-batching", batching="stacked", max_steps=1)
    with pytest.raises(PipelineError, match="sft.eval_fraction"):
        run(world, "bad-eval", eval_fraction=1.0, max_steps=1)
    with pytest.raises(PipelineError, match="sft.lora': unknown key"):
        run(world, "bad-lora", lora={"rank": 4}, max_steps=1)
    assert not (world[0] / "bad-batching").exists()


def test_sft_trainer_loss_is_the_same_padded_or_padding_free(world, tokenizer, tmp_path):
    """The loss the trainer optimises ignores the batch layout, with TRL's fused LM head (GPU)
    or the model's own loss (CPU), and both are the same number."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig

    from domainllm.train.sft import trainer_class

    rows = pl.read_parquet(world[2]).head(5).to_dicts()
    examples = [build_example(tokenizer, r["instruction"], r["output"], 80) for r in rows]
    ds = Dataset.from_dict(
        {"input_ids": [e["input_ids"] for e in examples], "labels": [e["labels"] for e in examples]}
    )
    losses = []
    for fused in (True, False):
        model = AutoModelForCausalLM.from_pretrained(world[1])
        args = SFTConfig(
            output_dir=str(tmp_path), padding_free=True, max_length=None, report_to=[],
            use_cpu=True, bf16=False, gradient_checkpointing=False,
        )  # fmt: skip
        trainer = trainer_class(fused)(
            model=model, args=args, train_dataset=ds, processing_class=tokenizer
        )
        model.eval()
        with torch.no_grad():
            for padding_free in (True, False):
                batch = collate(tokenizer, examples, padding_free=padding_free)
                losses.append(trainer.compute_loss(model, batch).item())
    assert losses == pytest.approx([losses[0]] * 4, rel=1e-4)


def test_module_entry_point_passes_batching_and_lora(world):
    from domainllm.train.sft import main

    root, base, data = world
    out = root / "cli"
    args = [
        "--base", str(base), "--data", str(data), "--output", str(out),
        "--checkpoint-dir", str(root / "cli-ckpt"), "--max-steps", "2", "--save-steps", "2",
        "--batch-size", "2", "--max-len", "64", "--batching", "packed", "--lora-r", "2",
        "--lora-target-modules", "q_proj,v_proj", "--eval-fraction", "0.05", "--threads", "1",
    ]  # fmt: skip
    assert main(args) == 0
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["batching"] == "packed" and metrics["eval_fraction"] == 0.05
    assert metrics["lora"] == {"r": 2, "alpha": 32.0, "dropout": 0.05,
                               "target_modules": ["q_proj", "v_proj"]}  # fmt: skip
    assert (out / "adapter" / "adapter_config.json").is_file() and metrics["steps"] == 2
