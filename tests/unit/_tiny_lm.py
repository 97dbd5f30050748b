"""Tiny real models for the quantise/infer/evaluate tests (no hub downloads).

A byte-level BPE tokenizer is trained on real sample text and a small
LlamaForCausalLM is initialised from a seed and saved as a save_pretrained
folder with safetensors and the pipeline's chat template, as the models stage
would write it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "data" / "samples"


def sample_texts(limit: int = 60) -> list[str]:
    """Japanese domain text (chABSA reports, sentences joined) from the real samples."""
    texts = []
    with open(SAMPLES / "chabsa" / "chabsa_all.jsonl", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            texts.append("\n".join(s["sentence"] for s in doc["sentences"]))
            if len(texts) >= limit:
                break
    return texts


def elyza_items(limit: int = 8) -> list[dict]:
    """The first ELYZA-tasks-100 items (input, output, eval_aspect)."""
    out = []
    with open(SAMPLES / "elyza_tasks_100" / "elyza_tasks_100.jsonl", encoding="utf-8") as f:
        for line in f:
            out.append(json.loads(line))
            if len(out) >= limit:
                break
    return out


def build_tokenizer(texts: list[str], vocab_size: int = 600):
    """Train a byte-level BPE tokenizer with bos/eos/pad/unk and the chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from domainllm.train.chat import CHAT_TEMPLATE

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
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    hf.chat_template = CHAT_TEMPLATE
    return hf


def build_model(
    path: Path,
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    intermediate: int = 128,
    vocab_size: int = 600,
    seed: int = 0,
    train_steps: int = 0,
) -> Path:
    """Save a tiny Llama model + tokenizer folder at ``path``; optionally train it briefly."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    texts = sample_texts()
    tokenizer = build_tokenizer(texts, vocab_size)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    if train_steps:
        ids = np.concatenate(
            [tokenizer(t)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
        ).astype(np.int64)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        rng = np.random.default_rng(seed)
        model.train()
        for _ in range(train_steps):
            starts = rng.integers(0, len(ids) - 65, size=8)
            batch = torch.tensor(np.stack([ids[s : s + 64] for s in starts]))
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
        model.eval()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def write_shards(
    model_dir: Path, out: Path, texts: list[str], tokens_per_shard: int = 20000
) -> Path:
    """Tokenise ``texts`` into shards + manifest.json per the cross-stage contract."""
    import hashlib

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    dtype = np.uint16 if len(tok) <= 65535 else np.uint32
    ids = []
    for t in texts:
        ids.extend(tok(t, add_special_tokens=False)["input_ids"])
        ids.append(tok.eos_token_id)
    arr = np.asarray(ids, dtype=dtype)
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for i, start in enumerate(range(0, len(arr), tokens_per_shard)):
        part = arr[start : start + tokens_per_shard]
        name = f"shard_{i:05d}.bin"
        part.tofile(out / name)
        sha = hashlib.sha256((out / name).read_bytes()).hexdigest()
        shards.append({"file": name, "tokens": int(len(part)), "docs": 0, "sha256": sha})
    shards[0]["docs"] = len(texts)
    manifest = {
        "tokenizer": str(model_dir),
        "dtype": np.dtype(dtype).name,
        "vocab_size": len(tok),
        "eos_id": tok.eos_token_id,
        "total_tokens": int(len(arr)),
        "total_docs": len(texts),
        "shards": shards,
        "sources": {"chabsa": {"docs": len(texts), "tokens": int(len(arr))}},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out
