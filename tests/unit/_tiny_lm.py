"""Tiny real models and sample data for the model, train, quantise, infer and evaluate tests.

No hub downloads: a byte-level BPE tokenizer is trained on real sample text and a
small LlamaForCausalLM is initialised from a seed, optionally saved as a
save_pretrained folder with safetensors and the pipeline's chat template, as
the models stage would write it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "data" / "samples"
JCQA = SAMPLES / "jglue" / "jcommonsenseqa-v1.3_valid-v1.3.json"
ELYZA = SAMPLES / "elyza_tasks_100" / "elyza_tasks_100.jsonl"
SELF_INSTRUCT = SAMPLES / "self_instruct_en" / "seed_tasks.jsonl"
PRODUCT_LOG = SAMPLES / "product_log" / "hh_rlhf_single_turn.jsonl"


def _jsonl(path: Path, limit: int | None) -> list[dict]:
    """The first ``limit`` records (None: all) of a JSONL file."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if limit is not None and len(out) >= limit:
                break
            out.append(json.loads(line))
    return out


def chabsa_documents(limit: int | None = None) -> list[dict]:
    """The first chABSA securities reports (header, sentences) of the real samples."""
    return _jsonl(SAMPLES / "chabsa" / "chabsa_all.jsonl", limit)


def sample_texts(limit: int = 60) -> list[str]:
    """Japanese domain text (chABSA reports, sentences joined) from the real samples."""
    return ["\n".join(s["sentence"] for s in doc["sentences"]) for doc in chabsa_documents(limit)]


def elyza_items(limit: int | None = 8) -> list[dict]:
    """The first ELYZA-tasks-100 items (input, output, eval_aspect); None: all 100."""
    return _jsonl(ELYZA, limit)


def write_eval_prompts(path: Path, n: int) -> list[dict]:
    """eval_prompts.parquet (id, prompt, reference, eval_aspect) of the first ``n`` ELYZA items."""
    import polars as pl

    items = elyza_items(n)
    pl.DataFrame(
        {
            "id": [f"elyza/{i}" for i in range(n)],
            "prompt": [x["input"] for x in items],
            "reference": [x["output"] for x in items],
            "eval_aspect": [x["eval_aspect"] for x in items],
        }
    ).write_parquet(path)
    return items


def prepare_sample_instructions(
    candidates: Path,
    eval_prompts: Path,
    *,
    seed: int,
    elyza_eval: int = 30,
    elyza: Path | None = ELYZA,
    self_instruct: Path | None = SELF_INSTRUCT,
) -> dict:
    """prepare_instructions on the real ELYZA and Self-Instruct samples (or the given files)."""
    from domainllm.data.instructions import prepare_instructions

    sources = [{"name": "self_instruct", "format": "self_instruct", "path": str(self_instruct)}]
    return prepare_instructions(
        str(elyza),
        str(candidates),
        str(eval_prompts),
        sources=sources if self_instruct else [],
        elyza_eval=elyza_eval,
        seed=seed,
    )


def build_tokenizer(texts: list[str], vocab_size: int = 600, *, chat_template: bool = True):
    """Train a byte-level BPE tokenizer with bos/eos/pad/unk (and the chat template)."""
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
    if chat_template:
        hf.chat_template = CHAT_TEMPLATE
    return hf


def tiny_llama(
    tokenizer,
    *,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    intermediate: int = 64,
    seed: int = 0,
    **config,
):
    """A LlamaForCausalLM with random weights drawn after ``torch.manual_seed(seed)``.

    The vocabulary and the bos/eos/pad ids are the tokenizer's; ``config`` adds
    LlamaConfig fields (max_position_embeddings, tie_word_embeddings, ...).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            intermediate_size=intermediate,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **config,
        )
    )


def save_folder(path: Path, model, tokenizer) -> Path:
    """Save ``model`` (safetensors) and ``tokenizer`` as one save_pretrained folder."""
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def build_model(
    path: Path,
    *,
    texts: list[str] | None = None,
    vocab_size: int = 600,
    chat_template: bool = True,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    intermediate: int = 128,
    seed: int = 0,
    train_steps: int = 0,
    **config,
) -> Path:
    """Save a tiny Llama model + tokenizer folder at ``path``; optionally train it briefly.

    The tokenizer is trained on ``texts`` (default: :func:`sample_texts`);
    ``config`` overrides LlamaConfig fields (512 positions, untied embeddings).
    """
    import torch

    texts = sample_texts() if texts is None else texts
    tokenizer = build_tokenizer(texts, vocab_size, chat_template=chat_template)
    config = {"max_position_embeddings": 512, "tie_word_embeddings": False, **config}
    model = tiny_llama(
        tokenizer,
        hidden=hidden,
        layers=layers,
        heads=heads,
        intermediate=intermediate,
        seed=seed,
        **config,
    )
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
    return save_folder(path, model, tokenizer)


def quick_train(train, root: Path, name: str, *paths: Path, **kw) -> tuple[dict, Path, Path]:
    """Run ``train`` (train_cpt, train_sft) on ``paths`` into ``root/name``, briefly.

    20 steps of 4 at learning rate 1e-2, a checkpoint every 10 and the loss every 2
    steps, unless ``kw`` says otherwise; checkpoints go to ``root/<name>-ckpt``.

    Returns:
        (metrics, output folder, checkpoint folder).
    """
    options = {
        "checkpoint_dir": str(root / f"{name}-ckpt"),
        "max_steps": 20,
        "batch_size": 4,
        "learning_rate": 1e-2,
        "save_steps": 10,
        "logging_steps": 2,
        **kw,
    }
    out = root / name
    metrics = train(*(str(p) for p in paths), str(out), **options)
    return metrics, out, Path(options["checkpoint_dir"])


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
