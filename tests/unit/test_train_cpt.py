"""Continued pre-training on real shards with a tiny Llama: learning, outputs, checkpoints."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from domainllm.errors import DataError  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "samples"


def chabsa_texts(limit: int = 120) -> list[str]:
    texts = []
    with open(SAMPLES / "chabsa" / "chabsa_all.jsonl", encoding="utf-8") as f:
        for line in f:
            texts.append("\n".join(s["sentence"] for s in json.loads(line)["sentences"]))
            if len(texts) >= limit:
                break
    return texts


def build_base(path: Path, texts: list[str], vocab_size: int = 400) -> Path:
    """A byte-level BPE tokenizer trained on ``texts`` and a tiny random Llama (hidden 32)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from domainllm.train.chat import CHAT_TEMPLATE

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            intermediate_size=64,
            max_position_embeddings=256,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_shards(out: Path, tokenizer_dir: Path, texts: list[str], per_shard: int = 15000) -> Path:
    """Shards + manifest.json exactly per the corpus stage's contract."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids: list[int] = []
    for t in texts:
        ids += tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    arr = np.asarray(ids, dtype="<u2")
    out.mkdir(parents=True)
    shards = []
    for i, start in enumerate(range(0, len(arr), per_shard)):
        name = f"shard_{i:05d}.bin"
        arr[start : start + per_shard].tofile(out / name)
        shards.append(
            {
                "file": name,
                "tokens": int(len(arr[start : start + per_shard])),
                "docs": 0,
                "sha256": hashlib.sha256((out / name).read_bytes()).hexdigest(),
            }
        )
    (out / "manifest.json").write_text(
        json.dumps(
            {
                "tokenizer": str(tokenizer_dir),
                "dtype": "uint16",
                "vocab_size": len(tok),
                "eos_id": tok.eos_token_id,
                "total_tokens": int(len(arr)),
                "total_docs": len(texts),
                "shards": shards,
                "sources": {"chabsa": {"docs": len(texts), "tokens": int(len(arr))}},
            }
        )
    )
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cpt")
    texts = chabsa_texts()
    base = build_base(root / "base", texts)
    shards = write_shards(root / "shards", base, texts)
    return root, base, shards


def run(world, name, **kw):
    from domainllm.train.cpt import train_cpt

    root, base, shards = world
    args = dict(
        checkpoint_dir=str(root / f"{name}-ckpt"),
        max_steps=20,
        batch_size=4,
        seq_len=64,
        learning_rate=1e-2,
        warmup_ratio=0.1,
        save_steps=10,
        seed=7,
        logging_steps=2,
    )
    args.update(kw)
    out = root / name
    return train_cpt(str(base), str(shards), str(out), **args), out, Path(args["checkpoint_dir"])


def test_cpt_learns_and_writes_a_loadable_folder(world):
    from domainllm.models.loading import load_causal_lm

    metrics, out, ckpt = run(world, "a")
    losses = [h["loss"] for h in metrics["loss_history"]]
    assert metrics["steps"] == 20 and metrics["resumed_from"] is None
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.5, losses
    assert metrics["tokens_seen"] == 20 * 4 * 64
    assert metrics["tokens_per_s"] > 0 and metrics["mfu"] is None  # CPU: no peak FLOP/s
    on_disk = json.loads((out / "train_metrics.json").read_text())
    assert on_disk["last_loss"] == pytest.approx(losses[-1])
    assert (out / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    assert sorted(p.name for p in ckpt.glob("checkpoint-*")) == ["checkpoint-10", "checkpoint-20"]
    model, tok = load_causal_lm(out)
    assert tok.chat_template and tok.eos_token_id == 2
    assert model.config.use_cache  # generation downstream keeps its KV cache
    ids = torch.tensor([tok("当社グループの売上高は増加しました。")["input_ids"]])
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids, labels=ids).loss)
    assert not list(out.parent.glob(".a.tmp-*"))  # the atomic temp folder is gone


def test_cpt_is_deterministic(world):
    first, _, _ = run(world, "d1", max_steps=6, save_steps=100)
    second, _, _ = run(world, "d2", max_steps=6, save_steps=100)
    assert [h["loss"] for h in first["loss_history"]] == [h["loss"] for h in second["loss_history"]]


def test_cpt_resumes_from_the_newest_checkpoint(world):
    first, _, ckpt = run(world, "r", max_steps=10, save_steps=5)
    assert first["steps"] == 10 and first["resumed_from"] is None
    assert {p.name for p in ckpt.glob("checkpoint-*")} == {"checkpoint-5", "checkpoint-10"}
    second, out, _ = run(world, "r", max_steps=20, save_steps=5)
    assert second["resumed_from"] == str(ckpt / "checkpoint-10")
    assert second["steps"] == 20
    steps = [h["step"] for h in second["loss_history"]]
    assert steps[0] == 1 and steps[-1] == 20  # the history spans both sessions
    assert second["tokens_seen"] == 20 * 4 * 64 and second["session_tokens"] == 10 * 4 * 64
    assert json.loads((out / "train_metrics.json").read_text())["resumed_from"].endswith(
        "checkpoint-10"
    )

    # Rerun once finished (output gone): the final checkpoint becomes the output as it is,
    # instead of the Trainer's extra step past max_steps.
    import shutil

    from safetensors.torch import load_file

    shutil.rmtree(out)
    again, out, _ = run(world, "r", max_steps=20, save_steps=5)
    assert again["steps"] == 20 and again["resumed_from"] == str(ckpt / "checkpoint-20")
    assert again["loss_history"] == second["loss_history"] and again["n_params"] > 0
    final, saved = (
        load_file(out / "model.safetensors"),
        load_file(ckpt / "checkpoint-20" / "model.safetensors"),
    )
    assert all(torch.equal(final[k], saved[k]) for k in saved)
    assert not (out / "optimizer.pt").exists() and (out / "loss_curve.png").is_file()
    assert json.loads((out / "config.json").read_text())["use_cache"] is True
    # Fewer steps than the newest checkpoint: never a model trained longer than asked.
    fewer, _, _ = run(world, "r", max_steps=17, save_steps=5)  # kept: checkpoint-15, -20
    assert fewer["resumed_from"] == str(ckpt / "checkpoint-15") and fewer["steps"] == 17


def test_half_written_and_foreign_checkpoints_are_not_resumed(world):
    _, _, ckpt = run(world, "s", max_steps=4, save_steps=2)
    (ckpt / "checkpoint-4" / "trainer_state.json").unlink()  # as if killed mid-save
    resumed, _, _ = run(world, "s", max_steps=4, save_steps=2)
    assert resumed["resumed_from"] == str(ckpt / "checkpoint-2")
    changed, _, _ = run(world, "s", max_steps=4, save_steps=2, learning_rate=5e-3)
    assert changed["resumed_from"] is None  # other hyper-parameters: start afresh


def test_module_entry_point(world):
    from domainllm.train.cpt import main

    root, base, shards = world
    rc = main(
        [
            "--base",
            str(base),
            "--shards",
            str(shards),
            "--output",
            str(root / "cli"),
            "--checkpoint-dir",
            str(root / "cli-ckpt"),
            "--max-steps",
            "2",
            "--batch-size",
            "2",
            "--seq-len",
            "32",
            "--save-steps",
            "2",
            "--logging-steps",
            "1",
        ]
    )
    assert rc == 0
    assert json.loads((root / "cli" / "train_metrics.json").read_text())["steps"] == 2


def test_shards_of_another_tokenizer_or_too_short_are_refused(world, tmp_path):
    root, base, shards = world
    manifest = json.loads((shards / "manifest.json").read_text())
    bad = tmp_path / "shards"
    bad.mkdir()
    for s in manifest["shards"]:
        (bad / s["file"]).write_bytes((shards / s["file"]).read_bytes())
    (bad / "manifest.json").write_text(json.dumps({**manifest, "eos_id": 0}))
    from domainllm.train.cpt import train_cpt

    kw = dict(
        checkpoint_dir=str(tmp_path / "ck"),
        max_steps=1,
        batch_size=1,
        seq_len=32,
        learning_rate=1e-3,
        save_steps=1,
        seed=0,
    )
    with pytest.raises(DataError, match="manifest.json: eos_id 0"):
        train_cpt(str(base), str(bad), str(tmp_path / "o"), **kw)
    with pytest.raises(DataError, match="fewer than one window"):
        train_cpt(str(base), str(shards), str(tmp_path / "o"), **{**kw, "seq_len": 10**7})
    assert not (tmp_path / "o").exists()


REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_configs_leave_no_auto_unfilled(stage, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from domainllm.train.common import training_arguments

    path = REPO / "config" / "deepspeed" / f"zero{stage}.json"
    args = training_arguments(
        checkpoint_dir=str(tmp_path), max_steps=10, batch_size=4, gradient_accumulation_steps=2,
        learning_rate=1e-3, warmup_ratio=0.1, save_steps=5, save_total_limit=2, logging_steps=1,
        seed=0, deepspeed=str(path), bf16=False, count_tokens="all",
    )  # fmt: skip
    tiny = LlamaForCausalLM(
        LlamaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=32)
    )  # fmt: skip
    ds = args.hf_deepspeed_config
    ds.trainer_config_finalize(args, tiny, 10)
    flat = json.dumps(ds.config)
    assert '"auto"' not in flat
    assert ds.config["zero_optimization"]["stage"] == stage
    assert ds.config["train_micro_batch_size_per_gpu"] == 4
    assert ds.config["gradient_accumulation_steps"] == 2 and ds.config["train_batch_size"] == 8


@pytest.mark.gpu
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_cpt_on_gpu_through_the_launcher(world, stage):
    """The module entry point under torchrun with ZeRO-{2,3} and bf16; then a resume."""
    import os
    import subprocess
    import sys

    pytest.importorskip("deepspeed")
    root, base, shards = world
    out, ckpt = root / f"ds{stage}", root / f"ds{stage}-ckpt"

    def launch(steps):
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1",
            "--master_port", str(29500 + stage), "-m", "domainllm.train.cpt",
            "--base", str(base), "--shards", str(shards), "--output", str(out),
            "--checkpoint-dir", str(ckpt), "--max-steps", str(steps), "--batch-size", "4",
            "--seq-len", "64", "--save-steps", "5", "--logging-steps", "1",
            "--learning-rate", "1e-2", "--bf16",
            "--deepspeed", str(REPO / "config" / "deepspeed" / f"zero{stage}.json"),
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "PYTHONPATH": str(REPO / "src")})  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-4000:]
        return json.loads((out / "train_metrics.json").read_text())

    first = launch(10)
    assert first["steps"] == 10 and first["last_loss"] < first["first_loss"]
    assert first["n_params"] > 0 and first["device"].startswith("cuda")
    second = launch(15)
    assert second["resumed_from"] == str(ckpt / "checkpoint-10") and second["steps"] == 15
    from domainllm.models.loading import load_causal_lm

    model, tok = load_causal_lm(out)
    assert model.config.vocab_size == len(tok)
