"""What continued pre-training and instruction tuning share around the Trainer.

Checkpoint discovery and resumption, the TrainingArguments both stages use, the
atomic (and multi-process safe) save of the final folder, train_metrics.json
with the throughput/MFU estimate, and the loss curve.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from domainllm.errors import PipelineError
from domainllm.io import atomic_path, write_json
from domainllm.models.loading import set_threads

log = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
RUN_FILE = "run.json"

# Dense bf16 peak FLOP/s per device of accelerators the pipeline is known to run
# on; used for the MFU estimate when no peak is configured. Unknown -> MFU null.
PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def is_main_process() -> bool:
    """True on the process that writes shared files (rank 0, or the only one)."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0


def wait_for_everyone() -> None:
    """Barrier across training processes; a no-op without torch.distributed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """The options both training stages take: the keyword arguments train_cpt and train_sft share.

    Attributes:
        checkpoint_dir: Trainer checkpoints; the newest complete one is resumed.
        max_steps: optimiser steps in total (resumed steps count).
        batch_size: sequences (CPT windows, SFT examples) per device per micro-batch.
        learning_rate: peak learning rate of the cosine schedule.
        save_steps: checkpoint interval.
        seed: seeds the data order and every RNG.
        gradient_accumulation_steps: micro-batches per optimiser step.
        warmup_ratio: share of ``max_steps`` spent warming up linearly.
        deepspeed: DeepSpeed JSON config (config/deepspeed/zero2.json), or None.
        bf16: mixed precision in bfloat16 (GPUs).
        save_total_limit: checkpoints kept.
        logging_steps: loss-logging interval (the loss history's resolution).
        peak_flops: peak FLOP/s per device for the MFU estimate (None: known GPUs, else null).
        threads: torch CPU threads (the job's share of cores; None keeps torch's default).
        trust_remote_code: allow custom model code in the base.
        allow_pickle: allow pickled (.bin) weights in the base.
    """

    checkpoint_dir: str
    max_steps: int
    batch_size: int
    learning_rate: float
    save_steps: int
    seed: int
    gradient_accumulation_steps: int = 1
    warmup_ratio: float = 0.05
    deepspeed: str | None = None
    bf16: bool = False
    save_total_limit: int = 2
    logging_steps: int = 5
    peak_flops: float | None = None
    threads: int | None = None
    trust_remote_code: bool = False
    allow_pickle: bool = False

    def start(self) -> None:
        """Limit torch's CPU threads and seed every RNG, before data or model load."""
        from transformers import set_seed

        set_threads(self.threads)
        set_seed(self.seed)

    def training_arguments(self, **stage: Any):
        """:func:`training_arguments` of these options; ``stage``: its stage-specific rest.

        That is ``count_tokens`` and, where they differ from the defaults, ``drop_last``
        and ``group_by_length``.
        """
        return training_arguments(
            **{name: getattr(self, name) for name in _ARGUMENT_OPTIONS}, **stage
        )

    def run_identity(self, world_size: int) -> dict[str, Any]:
        """The hyper-parameters a resumed run must share with its checkpoints (not max_steps)."""
        return {
            "batch_size": self.batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "learning_rate": self.learning_rate,
            "warmup_ratio": self.warmup_ratio,
            "seed": self.seed,
            "bf16": self.bf16,
            "deepspeed": (
                Path(self.deepspeed).read_text(encoding="utf-8") if self.deepspeed else None
            ),
            # ZeRO checkpoints are partitioned per rank; plain ones resume on any count.
            "world_size": world_size if self.deepspeed else None,
        }


# The TrainOptions that training_arguments takes.
_ARGUMENT_OPTIONS = (
    "checkpoint_dir", "max_steps", "batch_size", "gradient_accumulation_steps", "learning_rate",
    "warmup_ratio", "save_steps", "save_total_limit", "logging_steps", "seed", "deepspeed", "bf16",
)  # fmt: skip


# --------------------------------------------------------------------------- checkpoints


def complete_checkpoints(checkpoint_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Return ``(step, path)`` of the checkpoints the Trainer finished writing, oldest first.

    The Trainer writes ``trainer_state.json`` last, so a folder without it is a
    save that a killed job left half-written; it is skipped.
    """
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = CHECKPOINT_RE.match(p.name)
        if m and p.is_dir():
            if (p / "trainer_state.json").is_file():
                found.append((int(m.group(1)), p))
            else:
                log.warning("ignoring incomplete checkpoint %s (no trainer_state.json)", p)
    return sorted(found)


def latest_checkpoint(
    checkpoint_dir: str | os.PathLike, max_steps: int | None = None
) -> Path | None:
    """The newest complete checkpoint under ``checkpoint_dir`` (at most ``max_steps``), or None.

    Checkpoints beyond ``max_steps`` (a rerun with fewer steps) are not used:
    resuming from them would yield a model trained longer than asked.
    """
    found = [
        (step, p) for step, p in complete_checkpoints(checkpoint_dir)
        if max_steps is None or step <= max_steps
    ]  # fmt: skip
    return found[-1][1] if found else None


def checkpoint_step(checkpoint: Path) -> int:
    """The optimiser step a ``checkpoint-N`` folder was saved at."""
    return int(CHECKPOINT_RE.match(checkpoint.name).group(1))


def folder_fingerprint(path: str | os.PathLike, sample: int = 1 << 16) -> str:
    """A cheap content identity of a model folder or data file.

    Small files (configs, manifests, tokenizers) are hashed whole; large ones
    (weights) by size and three ``sample``-byte slices (start, middle, end), which
    any retraining changes, so hashing a multi-GB checkpoint costs milliseconds.
    """
    p = Path(path)
    h = hashlib.sha256()
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    for f in files:
        rel = f.name if p.is_file() else str(f.relative_to(p))
        size = f.stat().st_size
        h.update(f"{rel}\0{size}\0".encode())
        if size <= 1 << 20:
            h.update(f.read_bytes())
            continue
        with open(f, "rb") as fh:
            for offset in (0, size // 2, max(0, size - sample)):
                fh.seek(offset)
                h.update(fh.read(sample))
    return h.hexdigest()


def prepare_checkpoint_dir(
    checkpoint_dir: str | os.PathLike, run: dict[str, Any], max_steps: int | None = None
) -> Path | None:
    """Check the checkpoints in ``checkpoint_dir`` belong to this run; return the one to resume.

    ``run`` identifies the inputs and the hyper-parameters a resumed run must
    share with the one that wrote the checkpoints (not ``max_steps``: raising it
    continues a finished run). Checkpoints of a different run (new base, data or
    learning rate) would silently mix two trainings, so they are removed with a
    warning and training starts afresh. Called on every process; only the main
    process deletes or writes.
    """
    root = Path(checkpoint_dir)
    run_file = root / RUN_FILE
    if is_main_process():
        root.mkdir(parents=True, exist_ok=True)
        old = None
        if run_file.is_file():
            try:
                old = json.loads(run_file.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                old = None
        stale = complete_checkpoints(root) and old != run
        if stale:
            changed = sorted(
                k for k in set(run) | set(old or {}) if (old or {}).get(k) != run.get(k)
            )
            log.warning(
                "checkpoints in %s were written by a different run (changed: %s); removing them "
                "and training from the start",
                root,
                ", ".join(changed) or "unknown",
            )
        if stale or old != run:
            for p in root.iterdir():
                if CHECKPOINT_RE.match(p.name) and p.is_dir():
                    shutil.rmtree(p)
            write_json(run, run_file)
    wait_for_everyone()
    return latest_checkpoint(root, max_steps)


# --------------------------------------------------------------------------- Trainer set-up


def training_arguments(
    *,
    checkpoint_dir: str,
    max_steps: int,
    batch_size: int,
    gradient_accumulation_steps: int,
    learning_rate: float,
    warmup_ratio: float,
    save_steps: int,
    save_total_limit: int,
    logging_steps: int,
    seed: int,
    deepspeed: str | None,
    bf16: bool,
    count_tokens: str,
    drop_last: bool = True,
    group_by_length: bool = False,
):
    """TrainingArguments common to both stages: cosine schedule, no reporting, fixed seeds.

    ``count_tokens`` is "all" (packed CPT windows) or "non_padding" (SFT batches).
    Built BEFORE the model is loaded: with a ZeRO-3 DeepSpeed config, creating the
    arguments is what lets ``from_pretrained`` partition the weights as they load.
    """
    from transformers import TrainingArguments

    if deepspeed is not None and not Path(deepspeed).is_file():
        raise PipelineError(f"DeepSpeed config {deepspeed} does not exist")
    warmup_steps = int(round(warmup_ratio * max_steps))
    if not _cuda():
        # Multi-process CPU runs would get the device cpu:<rank>; resuming then fails,
        # as the Trainer loads optimizer.pt with map_location=args.device when
        # world_size > 1 and torch.load cannot restore onto an indexed CPU device
        # ("don't know how to restore data location ... (tagged with cpu:0)").
        os.environ.setdefault("ACCELERATE_TORCH_DEVICE", "cpu")
    return TrainingArguments(
        output_dir=checkpoint_dir,
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=warmup_steps,
        weight_decay=0.01,
        max_grad_norm=1.0,
        optim="adamw_torch",
        logging_strategy="steps",
        logging_steps=logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=save_total_limit,
        report_to=[],
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        dataloader_drop_last=drop_last,
        train_sampling_strategy="group_by_length" if group_by_length else "random",
        remove_unused_columns=False,
        include_num_input_tokens_seen=count_tokens,
        deepspeed=deepspeed,
        bf16=bf16,
        disable_tqdm=False,
        dataloader_pin_memory=_cuda(),
        # Without CUDA, multi-process launches need use_cpu to form a gloo (MULTI_CPU)
        # group; with DeepSpeed, use_cpu would drop DeepSpeed for plain DDP, so the
        # gloo group is set up beforehand (_cpu_deepspeed_state).
        use_cpu=not _cuda() and deepspeed is None,
        accelerator_config=_cpu_deepspeed_state() if deepspeed is not None else None,
        log_level="warning",
    )


def _cpu_deepspeed_state() -> dict[str, Any] | None:
    """Form the gloo process group for DeepSpeed under a launcher on a machine without CUDA.

    accelerate only picks a backend for GPU-like devices or for ``cpu=True`` (which
    means DDP, not DeepSpeed); left alone it initialises DeepSpeed's group but
    records one process, so every rank would train on the same batches, save as
    rank 0, and DeepSpeed would refuse the batch size (micro x accumulation x 1).
    Creating the shared accelerate state with ``backend="gloo"`` first, and telling
    the TrainingArguments to use it, gives the Trainer the real rank and world size.

    Returns:
        The ``accelerator_config`` for TrainingArguments, or None (CUDA, or no launcher).
    """
    if _cuda() or int(os.environ.get("LOCAL_RANK", "-1")) == -1:
        return None
    from datetime import timedelta

    from accelerate import PartialState

    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    try:
        PartialState(backend="gloo", timeout=timedelta(minutes=30))
    finally:
        del os.environ["ACCELERATE_USE_DEEPSPEED"]
    return {"use_configured_state": True}


def attach_logging(trainer) -> None:
    """Send the Trainer's log records to the job log instead of stdout; keep the progress bar.

    The stock ProgressCallback prints each record with ``tqdm.write`` on stdout,
    which under Snakemake lands on the console, not in the rule's log file.
    """
    from transformers.trainer_callback import ProgressCallback, TrainerCallback

    class _Bar(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            pass

    class _Log(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                shown = {
                    k: (f"{v:.4g}" if isinstance(v, float) else v)
                    for k, v in logs.items()
                    if k != "total_flos"
                }
                log.info("step %d/%d %s", state.global_step, state.max_steps, shown)

    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(_Bar())
    trainer.add_callback(_Log())


def load_model(base: str, *, trust_remote_code: bool, allow_pickle: bool):
    """Load the model to train (train mode) and its tokenizer, with a pad token set.

    Weights load in float32 whatever dtype they were saved in: bf16 training is
    mixed precision (autocast, or DeepSpeed's fp32 master weights), never
    optimiser updates on bf16 parameters.
    """
    import torch

    from domainllm.models.loading import load_causal_lm

    model, tokenizer = load_causal_lm(
        base, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle, dtype=torch.float32
    )
    if tokenizer.pad_token_id is None:
        # Padding positions are masked out of attention and loss, so any id works.
        tokenizer.pad_token = tokenizer.eos_token
    model.train()
    return model, tokenizer


def count_parameters(model) -> int:
    """Parameters of the model, also when ZeRO-3 has partitioned them (``ds_numel``)."""
    return int(sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters()))


def peak_flops_per_device(peak_flops: float | None) -> float | None:
    """The configured peak, else the table's value for the CUDA device, else None (CPU)."""
    if peak_flops is not None:
        return float(peak_flops)
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    for key, value in PEAK_FLOPS.items():
        if key in name:
            return value
    return None


# --------------------------------------------------------------------------- outputs


@contextlib.contextmanager
def output_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder that becomes ``path`` when the block succeeds.

    With one process this is :func:`domainllm.io.atomic_path`. Under a
    multi-process launcher every rank must take part in saving (ZeRO-3 gathers
    the weights), so all ranks share one temporary name and only rank 0 records
    its checksums (:func:`domainllm.verify.record_checksum`, as atomic_path does)
    and renames it, once every rank has finished writing.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        with atomic_path(path, directory=True) as tmp:
            yield tmp
        return
    final = Path(path)
    tmp = final.with_name(f".{final.name}.tmp-train")
    if is_main_process():
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    wait_for_everyone()
    try:
        yield tmp
        wait_for_everyone()
        if is_main_process():
            from domainllm.verify import record_checksum

            record_checksum(tmp, final)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
    except BaseException:
        if is_main_process():
            shutil.rmtree(tmp, ignore_errors=True)
        raise


def loss_history(log_history: list[dict]) -> list[dict]:
    """The training-loss records of ``trainer.state.log_history`` (step, loss, lr)."""
    out = []
    for rec in log_history:
        if "loss" in rec and "step" in rec:
            out.append(
                {
                    "step": int(rec["step"]),
                    "loss": float(rec["loss"]),
                    "learning_rate": float(rec.get("learning_rate", float("nan"))),
                }
            )
    return out


def train_metrics(
    state,
    *,
    runtime: float,
    world_size: int,
    resumed_from: Path | None,
    start_tokens: int,
    n_params: int,
    peak_flops: float | None,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The train_metrics.json record: loss history, throughput and the MFU estimate.

    Args:
        state: the Trainer's ``TrainerState`` (restored history included on resume).
        runtime: seconds this session trained (0 when nothing was left to train).
        world_size: processes that trained together.
        resumed_from: the checkpoint this session started from.
        start_tokens: tokens seen when this session started.
        n_params: model parameters.
        peak_flops: peak FLOP/s per device, or None (see :func:`peak_flops_per_device`).
        extra: stage-specific fields.

    MFU uses the usual 6·N FLOPs per trained token (forward + backward, no
    attention term) over this session's tokens per second, against the peak of
    all devices together.
    """
    history = loss_history(state.log_history)
    evals = [
        {"step": int(r["step"]), "loss": float(r["eval_loss"])}
        for r in state.log_history
        if "eval_loss" in r and "step" in r
    ]
    session_tokens = int(state.num_input_tokens_seen) - int(start_tokens)
    tokens_per_s = session_tokens / runtime if runtime > 0 else None
    peak = peak_flops_per_device(peak_flops)
    mfu = None
    if peak is not None and tokens_per_s is not None:
        mfu = 6.0 * n_params * tokens_per_s / (peak * world_size)
    return {
        "steps": int(state.global_step),
        "max_steps": int(state.max_steps),
        "resumed_from": str(resumed_from) if resumed_from is not None else None,
        "first_loss": history[0]["loss"] if history else None,
        "last_loss": history[-1]["loss"] if history else None,
        "loss_history": history,
        # Held-out loss (stages that evaluate, e.g. SFT); the last is at the final step.
        "eval_loss": evals[-1]["loss"] if evals else None,
        "eval_history": evals,
        "tokens_seen": int(state.num_input_tokens_seen),
        "session_tokens": session_tokens,
        "train_runtime_s": float(runtime),
        "tokens_per_s": tokens_per_s,
        "n_params": int(n_params),
        "world_size": int(world_size),
        "peak_flops_per_device": peak,
        "mfu": mfu,
        "epochs": float(state.epoch or 0.0),
        **extra,
    }


def plot_loss_curve(history: list[dict], path: str | os.PathLike, title: str) -> None:
    """Save the training loss against the optimiser step as a PNG (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot([h["step"] for h in history], [h["loss"] for h in history], marker=".")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _write_report(folder: Path, metrics: dict[str, Any], title: str) -> None:
    (folder / "train_metrics.json").write_text(
        json.dumps(metrics, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    plot_loss_curve(metrics["loss_history"], folder / "loss_curve.png", title)


# Files of a checkpoint that are training state, not the model.
_STATE_FILES = re.compile(
    r"^(optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state.*\.pth|trainer_state\.json|"
    r"training_args\.bin|latest|zero_to_.*\.py)$"
)


def safetensors_parameters(folder: Path) -> int:
    """Parameters stored in a folder's safetensors files (read from their headers only)."""
    import struct

    total = 0
    for f in folder.glob("*.safetensors"):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, meta in header.items():
            if name != "__metadata__":
                count = 1
                for d in meta["shape"]:
                    count *= d
                total += count
    return total


def _restore_use_cache(config: Path, base_config: Path) -> None:
    """Give a checkpoint's config the base's ``use_cache`` (the Trainer saved it off)."""
    if not config.is_file():
        return
    cfg = json.loads(config.read_text(encoding="utf-8"))
    base_cfg = json.loads(base_config.read_text(encoding="utf-8")) if base_config.is_file() else {}
    cfg["use_cache"] = base_cfg.get("use_cache", True)
    config.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def finish_from_checkpoint(
    checkpoint: Path,
    output: str,
    *,
    base: str,
    world_size: int,
    extra: dict[str, Any],
    title: str,
    finalize: Callable[[Path], None] | None = None,
) -> dict[str, Any]:
    """Write ``output`` from a checkpoint saved at the final step, without training.

    The Trainer, resumed at ``max_steps``, would still take one more step; a
    rerun after the training finished (output deleted, or a change that does
    not touch the run's identity such as ``save_steps``) instead copies the
    checkpoint's model files and reports its recorded history. ``finalize`` is
    the stage's last touch to the folder, as in :func:`run_stage`.
    """
    from transformers import TrainerState

    state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
    metrics: dict[str, Any] = {}
    log.info("%s already holds the final step; writing %s from it", checkpoint, output)
    with output_folder(output) as tmp:
        if is_main_process():
            for f in checkpoint.iterdir():
                if f.is_file() and not _STATE_FILES.match(f.name):
                    shutil.copy2(f, tmp / f.name)
            _restore_use_cache(tmp / "config.json", Path(base) / "config.json")
            if finalize is not None:
                finalize(tmp)
            if not any(tmp.glob("*.safetensors")):
                raise PipelineError(
                    f"{checkpoint}: no consolidated safetensors weights to finish from (ZeRO-3 "
                    "needs stage3_gather_16bit_weights_on_model_save); delete the checkpoint "
                    "folder to train again"
                )
            metrics = train_metrics(
                state, runtime=0.0, world_size=world_size, resumed_from=checkpoint,
                start_tokens=state.num_input_tokens_seen,
                n_params=safetensors_parameters(tmp), peak_flops=None, extra=extra,
            )  # fmt: skip
            _write_report(tmp, metrics, title)
    return metrics


def run_stage(
    stage: str,
    base: str,
    output: str,
    options: TrainOptions,
    args,
    identity: dict[str, Any],
    build: Callable[[Any, Any], tuple[Any, Any, dict[str, Any]]],
    extra: dict[str, Any],
    *,
    trainer_factory: Callable[..., Any] | None = None,
    finalize: Callable[[Path], None] | None = None,
) -> dict[str, Any]:
    """Resume-or-start one training stage and write its output folder.

    Args:
        stage: "cpt" or "sft" (in the metrics, the run identity and the plot's title).
        base: model folder to train.
        output: final folder (model, tokenizer, train_metrics.json, loss_curve.png).
        options: the shared options (checkpoint folder, MFU peak, loading rules).
        args: from :meth:`TrainOptions.training_arguments` (created before the model loads).
        identity: the stage's inputs (fingerprints) and settings a resumable checkpoint
            must share with this run, besides the shared hyper-parameters (see
            :func:`prepare_checkpoint_dir`).
        build: ``(model, tokenizer) -> (train_dataset, data_collator, data_fields)``;
            ``data_fields`` join the metrics.
        extra: fields of the metrics known without loading anything.
        trainer_factory: builds the trainer from the Trainer's keyword arguments
            (model, args, train_dataset, data_collator, processing_class); None: Trainer.
        finalize: called on the main process with the temporary output folder once
            the model and tokenizer are in it (e.g. to merge adapters).

    Returns:
        The metrics (empty on non-main processes).
    """
    import torch
    from transformers import Trainer

    title = f"{stage.upper()} of {Path(base).name}"
    max_steps = int(args.max_steps)
    world = int(args.world_size)
    run = {
        "stage": stage,
        "base": folder_fingerprint(base),
        **identity,
        **options.run_identity(args.world_size),
    }
    resume = prepare_checkpoint_dir(options.checkpoint_dir, run, max_steps)
    extra = {
        "stage": stage,
        "base": str(base),
        **extra,
        "device": str(args.device),
        "torch_threads": torch.get_num_threads(),
    }
    if resume is not None and checkpoint_step(resume) >= max_steps:
        return finish_from_checkpoint(
            resume, output, base=base, world_size=world, extra=extra, title=title,
            finalize=finalize,
        )  # fmt: skip

    model, tokenizer = load_model(
        base, trust_remote_code=options.trust_remote_code, allow_pickle=options.allow_pickle
    )
    dataset, collator, data_fields = build(model, tokenizer)
    use_cache = bool(getattr(model.config, "use_cache", True))
    n_params = count_parameters(model)
    log.info("%s: %.2fM parameters, %s", title, n_params / 1e6, data_fields)
    start_tokens = 0
    if resume is not None:
        state = json.loads((resume / "trainer_state.json").read_text(encoding="utf-8"))
        start_tokens = int(state.get("num_input_tokens_seen", 0))
        log.info("resuming from %s", resume)

    trainer = (trainer_factory or Trainer)(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=collator,
        processing_class=tokenizer,
    )
    attach_logging(trainer)
    result = trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    # The Trainer switches the KV cache off in the config (args.use_cache); the saved
    # model must keep the base's setting or every later generation runs without it.
    model.config.use_cache = use_cache

    metrics: dict[str, Any] = {}
    with output_folder(output) as tmp:
        trainer.save_model(str(tmp))  # every rank: ZeRO-3 gathers the shards here
        if is_main_process():
            tokenizer.save_pretrained(str(tmp))
            if finalize is not None:
                finalize(tmp)
            # save_model also drops the TrainingArguments pickle; the folder loads
            # with safetensors only.
            (tmp / "training_args.bin").unlink(missing_ok=True)
            metrics = train_metrics(
                trainer.state, runtime=float(result.metrics.get("train_runtime", 0.0)),
                world_size=world, resumed_from=resume, start_tokens=start_tokens,
                n_params=n_params, peak_flops=options.peak_flops, extra={**extra, **data_fields},
            )  # fmt: skip
            _write_report(tmp, metrics, title)
    if metrics:
        log.info(
            "%s done: %d steps, loss %.4f -> %.4f, %.0f tokens/s", title, metrics["steps"],
            metrics["first_loss"] or float("nan"), metrics["last_loss"] or float("nan"),
            metrics["tokens_per_s"] or 0.0,
        )  # fmt: skip
    return metrics


# --------------------------------------------------------------------------- launching

LAUNCHERS = ("none", "torchrun", "deepspeed")


def launch_command(
    module: str, launcher: str, *, nproc_per_node: int = 1, nodes: int = 1, port: int = 29500
) -> str:
    """The shell command that runs ``python -m module`` on every process of a launch.

    Args:
        module: the entry point (``domainllm.train.cpt``); its options follow the command.
        launcher: "none" (one process), "torchrun" or "deepspeed".
        nproc_per_node: processes (GPUs) per node.
        nodes: nodes; more than one needs torchrun inside a SLURM allocation: ``srun``
            starts one torchrun per node, which meet at a c10d rendezvous on the first
            node of ``$SLURM_JOB_NODELIST``.
        port: the rendezvous port (several nodes) or the deepspeed launcher's master port.
            One node under torchrun uses ``--standalone``, which picks a free port.

    Raises:
        ConfigError: an unknown launcher, or DeepSpeed's launcher on several nodes (it
            needs a hostfile and passwordless ssh; torchrun with ``--deepspeed`` does not).
    """
    from domainllm.errors import ConfigError

    if launcher not in LAUNCHERS:
        raise ConfigError(f"launcher {launcher!r} is not one of {', '.join(LAUNCHERS)}")
    if nproc_per_node < 1 or nodes < 1:
        raise ConfigError(f"nproc_per_node={nproc_per_node} and nodes={nodes} must be >= 1")
    if launcher == "none":
        if nproc_per_node * nodes > 1:
            raise ConfigError("launcher 'none' runs one process; use torchrun or deepspeed")
        return f"python -m {module}"
    if launcher == "deepspeed":
        if nodes > 1:
            raise ConfigError(
                "launcher 'deepspeed' runs on one node here; use torchrun for several nodes "
                "(the DeepSpeed config still applies through --deepspeed)"
            )
        return f"deepspeed --num_gpus {nproc_per_node} --master_port {port} --module {module}"
    if nodes == 1:
        return f"torchrun --standalone --nproc_per_node {nproc_per_node} -m {module}"
    head = '$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)'
    return (
        f"srun --nodes {nodes} --ntasks-per-node 1 torchrun --nnodes {nodes} "
        f"--nproc_per_node {nproc_per_node} --rdzv_id $SLURM_JOB_ID --rdzv_backend c10d "
        f"--rdzv_endpoint {head}:{port} -m {module}"
    )


def cli_flags(options: dict[str, Any]) -> str:
    """Keyword arguments of train_cpt/train_sft as the entry point's options (shell-quoted).

    ``max_steps=10`` becomes ``--max-steps 10``; True becomes a bare flag (``--bf16``);
    False and None are left out (the entry point's defaults).
    """
    import shlex

    out = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is None or value is False:
            continue
        out.append(flag if value is True else f"{flag} {shlex.quote(str(value))}")
    return " ".join(out)


def add_common_cli(parser) -> None:
    """Options both entry points take, with the launchers' ``--local_rank``."""
    parser.add_argument("--checkpoint-dir", required=True, help="where checkpoints go (resumed)")
    parser.add_argument("--max-steps", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=8, help="per device")
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--warmup-ratio", type=float, default=0.05)
    parser.add_argument("--save-steps", type=int, default=50)
    parser.add_argument("--logging-steps", type=int, default=5)
    parser.add_argument("--deepspeed", default=None, help="DeepSpeed JSON config")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--peak-flops", type=float, default=None, help="per device, for MFU")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--allow-pickle", action="store_true")
    parser.add_argument("--log", default=None, help="log file (default: stderr)")
    # deepspeed passes --local_rank=N; torchrun sets LOCAL_RANK, which HF reads.
    parser.add_argument(
        "--local_rank", "--local-rank", type=int, default=-1, help=argparse.SUPPRESS
    )


def common_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The options of :func:`add_common_cli` as train_cpt/train_sft keyword arguments."""
    given = vars(args)
    return {f.name: given[f.name] for f in dataclasses.fields(TrainOptions) if f.name in given}


def cli_main(
    train: Callable[..., Any],
    argv: list[str] | None,
    paths: dict[str, str],
    *,
    length: tuple[str, int],
) -> int:
    """A stage's module entry point: parse its options, log to ``--log``, run ``train``.

    Args:
        train: train_cpt or train_sft, called as
            ``train(*paths, <length>=..., **common_kwargs(args))``; ``--help`` shows its
            module's docstring.
        argv: the command line (None: ``sys.argv``).
        paths: ``{name: help}`` of train's positional arguments in order, each a required
            ``--name`` option.
        length: the stage's length option (keyword argument name) and its default.

    Returns:
        The exit status, 0.
    """
    from domainllm.logs import log_to

    module = sys.modules[train.__module__]
    # Under ``python -m`` the module is __main__; its spec keeps the real name.
    name = module.__spec__.name if module.__spec__ is not None else module.__name__
    parser = argparse.ArgumentParser(
        prog=f"python -m {name}",
        description=module.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for name, help_text in paths.items():
        parser.add_argument(f"--{name}", required=True, help=help_text)
    length_name, length_default = length
    parser.add_argument("--" + length_name.replace("_", "-"), type=int, default=length_default)
    add_common_cli(parser)
    a = parser.parse_args(argv)
    with log_to(a.log if is_main_process() else None):
        train(
            *(getattr(a, name) for name in paths),
            **{length_name: getattr(a, length_name)},
            **common_kwargs(a),
        )
    return 0
