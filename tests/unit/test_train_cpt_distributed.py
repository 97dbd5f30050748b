"""CPT under launchers on CPU: DeepSpeed ZeRO with two processes, and kill/resume.

Every run here is the module entry point in subprocesses, started with the command
the workflow's train_cpt rule uses (``domainllm.train.common.launch_command``):
two processes talk over gloo, DeepSpeed uses its CPU accelerator.

DeepSpeed compiles its CPU communication op the first time (about a minute on two
cores); the ops are kept between sessions in ``TORCH_EXTENSIONS_DIR`` (``make test``
sets .torch_extensions), else in the pytest cache (.pytest_cache/d/torch_extensions).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from domainllm.train.common import complete_checkpoints, launch_command  # noqa: E402
from domainllm.verify import CHECKSUMS, describe, record_path  # noqa: E402
from tests.unit._tiny_lm import ROOT, quick_train, sample_texts, write_shards  # noqa: E402
from tests.unit.test_train_cpt import build_base  # noqa: E402

SEQ_LEN = 64
BATCH = 4
ZERO = {stage: ROOT / "config" / "deepspeed" / f"zero{stage}.json" for stage in (2, 3)}

# A module that runs the entry point but, once a checkpoint is saved, marks it with a
# file per rank and sleeps: the test kills the job while every rank is known to be past
# that checkpoint and before the next one.
PAUSE_AFTER_SAVE = """
import os, sys, time
from pathlib import Path

from transformers import TrainerCallback

from domainllm.train import common, cpt


class PauseAfterSave(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        rank = os.environ.get("RANK", "0")
        Path(os.environ["PAUSE_MARKS"], f"{state.global_step}-{rank}").touch()
        time.sleep(600)


_attach = common.attach_logging


def attach_logging(trainer):
    _attach(trainer)
    trainer.add_callback(PauseAfterSave())


common.attach_logging = attach_logging
sys.exit(cpt.main())
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cpt-dist")
    (root / CHECKSUMS).mkdir()  # a results folder: outputs get write-time checksums
    texts = sample_texts(120)
    base = build_base(root / "base", texts)
    shards = write_shards(base, root / "shards", texts, tokens_per_shard=15000)
    (root / "pause_after_save.py").write_text(PAUSE_AFTER_SAVE)
    return root, base, shards


def torch_extensions_dir(pytestconfig) -> str:
    """Where DeepSpeed's JIT-compiled ops live between test sessions."""
    given = os.environ.get("TORCH_EXTENSIONS_DIR")
    return given or str(pytestconfig.cache.mkdir("torch_extensions"))


@pytest.fixture(scope="session")
def torch_extensions(pytestconfig) -> str:
    return torch_extensions_dir(pytestconfig)


def command(world, name, *, launcher="none", nproc=1, deepspeed=None, module=None, **options):
    """The train_cpt rule's command line writing root/name (checkpoints: root/name-ckpt)."""
    root, base, shards = world
    options = {
        "max-steps": 8, "batch-size": BATCH, "seq-len": SEQ_LEN, "save-steps": 4,
        "logging-steps": 1, "learning-rate": 1e-2, "warmup-ratio": 0.1, "seed": 7, "threads": 1,
        **options,
    }  # fmt: skip
    launch = launch_command(module or "domainllm.train.cpt", launcher, nproc_per_node=nproc)
    args = ["--base", base, "--shards", shards, "--output", root / name,
            "--checkpoint-dir", root / f"{name}-ckpt"]  # fmt: skip
    for key, value in options.items():
        args += [f"--{key}", value]
    if deepspeed is not None:
        args += ["--deepspeed", ZERO[deepspeed]]
    return shlex.split(launch) + [str(a) for a in args]


def environment(world, torch_extensions, marks: Path | None = None) -> dict[str, str]:
    root = world[0]
    return {
        **os.environ,
        # The launchers (torchrun, deepspeed) of this interpreter's environment.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), str(root)]),
        "TORCH_EXTENSIONS_DIR": torch_extensions,
        "OMP_NUM_THREADS": "1",
        "PAUSE_MARKS": str(marks or root),
    }


def train(world, torch_extensions, name, **kw) -> tuple[dict, str]:
    """Run the command to the end; return its train_metrics.json and its log (stderr)."""
    proc = subprocess.run(
        command(world, name, **kw), env=environment(world, torch_extensions),
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-6000:]
    return json.loads((world[0] / name / "train_metrics.json").read_text()), proc.stderr


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


# --------------------------------------------------------------------------- DeepSpeed


@pytest.fixture(scope="module")
def one_process_batch8(world):
    """One process with batch 8: what two processes with batch 4 each must reproduce."""
    from domainllm.train.cpt import train_cpt

    root, base, shards = world
    return quick_train(
        train_cpt, root, "single8", base, shards, seq_len=SEQ_LEN, batch_size=2 * BATCH,
        max_steps=10, save_steps=100, logging_steps=1, warmup_ratio=0.1, seed=7, threads=1,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("launcher,stage", [("torchrun", 2), ("torchrun", 3), ("deepspeed", 2)])
def test_deepspeed_zero_on_two_cpu_processes(
    world, torch_extensions, one_process_batch8, launcher, stage
):
    from domainllm.models.loading import load_causal_lm

    root = world[0]
    name = f"ds-{launcher}-{stage}"
    metrics, _ = train(
        world, torch_extensions, name, launcher=launcher, nproc=2, deepspeed=stage,
        **{"max-steps": 10, "save-steps": 5, "peak-flops": 1e12},
    )  # fmt: skip
    losses = [h["loss"] for h in metrics["loss_history"]]
    assert metrics["steps"] == 10 and metrics["world_size"] == 2 and metrics["device"] == "cpu"
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.3, losses
    assert metrics["tokens_seen"] == 10 * 2 * BATCH * SEQ_LEN
    assert metrics["tokens_per_step"] == 2 * BATCH * SEQ_LEN

    # The two ranks split each global batch of 8 windows (not the same 4 twice): the
    # run matches one process with batch 8, step by step and in its final weights.
    single, single_out, _ = one_process_batch8
    assert losses == pytest.approx([h["loss"] for h in single["loss_history"]], abs=1e-4)
    out = root / name
    got, want = weights(out), weights(single_out)
    assert got.keys() == want.keys()
    assert all(torch.allclose(got[k], want[k], atol=1e-4) for k in want)

    # ZeRO partitioned the optimizer state (stage 3: also the weights) over both ranks.
    saved = {p.name for p in (root / f"{name}-ckpt" / "checkpoint-10" / "global_step10").iterdir()}
    assert {f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)} <= saved, saved
    if stage == 3:
        assert "zero_pp_rank_1_mp_rank_00_model_states.pt" in saved

    # The report: loss curve, throughput and MFU = 6 N tokens/s / (peak x devices).
    assert (out / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert metrics["tokens_per_s"] > 0 and metrics["n_params"] == single["n_params"]
    mfu = 6 * metrics["n_params"] * metrics["tokens_per_s"] / (1e12 * 2)
    assert metrics["mfu"] == pytest.approx(mfu)
    # Rank 0 recorded the folder's checksums for `domainllm verify` before renaming it.
    record = json.loads(record_path(root, out).read_text())
    assert record["kind"] == "directory" and record["files"] == describe(out)["files"]
    model, tok = load_causal_lm(out)  # consolidated safetensors, also after ZeRO-3
    ids = torch.tensor([tok("当社グループの売上高は増加しました。")["input_ids"]])
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids, labels=ids).loss)


# --------------------------------------------------------------------------- kill and resume


def kill_after_first_checkpoint(world, torch_extensions, name, nproc, **kw) -> int:
    """Start training, SIGKILL every process once all ranks saved a checkpoint; its step."""
    marks = world[0] / f"{name}-marks"
    marks.mkdir()
    cmd = command(world, name, module="pause_after_save", nproc=nproc, **kw)
    proc = subprocess.Popen(
        cmd, env=environment(world, torch_extensions, marks), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 600
    try:
        while len(list(marks.iterdir())) < nproc:
            if proc.poll() is not None:
                raise AssertionError(f"training ended before a checkpoint:\n{proc.stderr.read()}")
            assert time.monotonic() < deadline, "no checkpoint within 600 s"
            time.sleep(0.05)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher and every worker: a node loss
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    steps = {int(p.name.split("-")[0]) for p in marks.iterdir()}
    assert len(steps) == 1, sorted(marks.iterdir())
    return steps.pop()


KILL_CASES = [
    pytest.param("none", 1, None, id="one-process"),
    pytest.param("torchrun", 2, None, id="torchrun-2-ddp", marks=pytest.mark.slow),
    pytest.param("torchrun", 2, 2, id="torchrun-2-zero2", marks=pytest.mark.slow),
    pytest.param("torchrun", 2, 3, id="torchrun-2-zero3", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("launcher,nproc,stage", KILL_CASES)
def test_killed_training_resumes_and_ends_where_an_uninterrupted_run_ends(
    world, torch_extensions, launcher, nproc, stage
):
    root = world[0]
    run = {"launcher": launcher, "nproc": nproc, "deepspeed": stage}
    name = f"killed-{launcher}-{nproc}-{stage}"
    reference, _ = train(
        world, torch_extensions, f"uninterrupted-{launcher}-{nproc}-{stage}", **run
    )

    step = kill_after_first_checkpoint(world, torch_extensions, name, **run)
    ckpt = root / f"{name}-ckpt"
    assert step == 4 and [s for s, _ in complete_checkpoints(ckpt)] == [4]
    assert not (root / name).exists()  # the killed job wrote no output

    resumed, log = train(world, torch_extensions, name, **run)
    assert resumed["resumed_from"] == str(ckpt / "checkpoint-4")
    assert f"resuming from {ckpt / 'checkpoint-4'}" in log
    tokens_per_step = nproc * BATCH * SEQ_LEN
    assert resumed["steps"] == 8 and resumed["session_tokens"] == 4 * tokens_per_step
    assert resumed["tokens_seen"] == reference["tokens_seen"] == 8 * tokens_per_step
    # Steps 5-8 saw the same batches with the same weights, optimiser moments and
    # learning rates as the uninterrupted run: losses, schedule and weights are equal.
    assert resumed["loss_history"] == reference["loss_history"]
    got, want = weights(root / name), weights(root / f"uninterrupted-{launcher}-{nproc}-{stage}")
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    # Not vacuous: the last four steps moved the weights away from the checkpoint's.
    at_kill = weights(ckpt / "checkpoint-4")
    assert not all(torch.equal(at_kill[k], want[k]) for k in want)
