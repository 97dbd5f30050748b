"""Continued pre-training on real shards with a tiny Llama: learning, outputs, checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from domainllm.errors import DataError  # noqa: E402
from tests.unit._tiny_lm import (  # noqa: E402
    ROOT,
    build_model,
    quick_train,
    sample_texts,
    write_shards,
)


def build_base(path: Path, texts: list[str]) -> Path:
    """A byte-level BPE tokenizer trained on ``texts`` and a tiny random Llama (hidden 32)."""
    return build_model(
        path, texts=texts, vocab_size=400, hidden=32, heads=2, intermediate=64,
        max_position_embeddings=256,
    )  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cpt")
    texts = sample_texts(120)
    base = build_base(root / "base", texts)
    shards = write_shards(base, root / "shards", texts, tokens_per_shard=15000)
    return root, base, shards


def run(world, name, shards=None, **kw):
    from domainllm.train.cpt import train_cpt

    root, base, world_shards = world
    kw = {"seq_len": 64, "warmup_ratio": 0.1, "seed": 7, **kw}
    return quick_train(train_cpt, root, name, base, shards or world_shards, **kw)


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
    with pytest.raises(DataError, match="manifest.json: eos_id 0"):
        run(world, "refused", shards=bad, max_steps=1, batch_size=1, seq_len=32)
    with pytest.raises(DataError, match="fewer than one window"):
        run(world, "refused", max_steps=1, batch_size=1, seq_len=10**7)
    assert not (root / "refused").exists()


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_configs_leave_no_auto_unfilled(stage, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from domainllm.train.common import training_arguments

    path = ROOT / "config" / "deepspeed" / f"zero{stage}.json"
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
            "--deepspeed", str(ROOT / "config" / "deepspeed" / f"zero{stage}.json"),
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "PYTHONPATH": str(ROOT / "src")})  # fmt: skip
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
