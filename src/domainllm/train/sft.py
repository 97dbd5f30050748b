"""Instruction tuning with TRL's SFTTrainer: chat template, loss on answers only, packing, LoRA.

Each example is tokenised in two parts: the prompt (the user turn plus the
assistant header, exactly what generation feeds the model, via
``apply_chat_template(add_generation_prompt=True)``) and the answer as the
template closes an assistant turn (the content, then the template's
end-of-turn token; the eos token when the template writes none). Labels are
-100 on the prompt, so only answer tokens (and the end-of-turn token that
teaches the model to stop) carry loss. The template is the base tokenizer's,
the pipeline's own (domainllm.train.chat) when it has none, or a Jinja file
from config (``sft.chat_template``); the tuned tokenizer keeps it.

TRL's SFTTrainer then trains on these pre-tokenised examples (its own dataset
preparation is skipped for tokenisation, since the labels are already built):

- ``batching="padded"``: batches right-padded to their longest example.
- ``batching="padding_free"``: a batch's examples concatenated into one row,
  position ids restarting at each example (TRL's padding-free collator).
- ``batching="packed"``: examples packed best-fit-decreasing into rows of
  ``max_len`` tokens (TRL ``packing_strategy="bfd"``), then collated padding-free.

In both padding-free modes examples do not see each other: transformers builds a
block-diagonal causal mask from the restarting position ids (sdpa, eager) or
passes the boundaries to the varlen kernels (flash attention), and the first
label of each example is masked, so no token is predicted across a boundary.

``lora`` trains peft LoRA adapters instead of all weights; the adapters are
merged into the saved model (later stages load a plain model) and also kept
under ``adapter/``. A share ``eval_fraction`` of the examples is held out and
the evaluation loss is measured at every checkpoint and at the last step
(``eval_loss`` and ``eval_history`` in train_metrics.json). Checkpoints and
resumption work as in CPT.

Usage (one CPU process; the embedded default's scale):
    python -m domainllm.train.sft --base results/models/tiny-domain/cpt \\
        --data results/data/sft.parquet --output /tmp/sft \\
        --checkpoint-dir /tmp/sft-checkpoints --max-steps 120 --batch-size 8 --max-len 256 \\
        --threads 1 [--batching packed] [--lora-r 16 --lora-alpha 32]

Several GPUs: ``deepspeed --num_gpus N -m domainllm.train.sft ... --deepspeed
config/deepspeed/zero2.json --bf16`` (or ``torchrun --nproc_per_node N -m ...``).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

from domainllm.errors import DataError, PipelineError
from domainllm.train import common
from domainllm.train.chat import CHAT_TEMPLATE, format_prompt

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
BATCHING = ("padded", "padding_free", "packed")
ADAPTER_DIR = "adapter"
# The entry point's required paths, in train_sft's argument order: {option: help}.
CLI_PATHS = {
    "base": "save_pretrained folder to tune",
    "data": "SFT Parquet (instruction, output)",
    "output": "trained model folder",
}
# Stands in for an answer when probing how the template closes an assistant turn.
_PROBE = "\x00ANSWER\x00"


def _ids(tokenizer, text: str, *, as_text: bool = False) -> list[int]:
    # The template already writes bos; the tokenizer must not add another. as_text:
    # special-token strings in the text are characters, not special tokens.
    return list(
        tokenizer(text, add_special_tokens=False, split_special_tokens=as_text)["input_ids"]
    )


def answer_tokens(tokenizer, turn: AssistantTurn, answer: str) -> list[int]:
    """The supervised tokens of an answer: the turn's prefix, the answer, the closing tokens.

    Special-token strings inside the answer (``</s>`` quoted in a product log, say) are
    encoded as text, so the model never learns to end an answer in its middle; the
    template's own prefix keeps its special tokens.
    """
    if any(s in turn.prefix for s in tokenizer.all_special_tokens):
        body = _ids(tokenizer, turn.prefix) + _ids(tokenizer, answer, as_text=True)
    else:
        body = _ids(tokenizer, turn.prefix + answer, as_text=True)
    return body + list(turn.suffix_ids)


@dataclasses.dataclass(frozen=True)
class AssistantTurn:
    """How the chat template writes an assistant answer after the generation prompt.

    Attributes:
        prefix: text the template puts before the content (usually empty).
        suffix_ids: the tokens that close the turn (end-of-turn token, or eos appended).
    """

    prefix: str
    suffix_ids: tuple[int, ...]

    @property
    def stop_id(self) -> int:
        """The token the tuned model ends its answers with."""
        return self.suffix_ids[-1]


def assistant_turn(tokenizer) -> AssistantTurn:
    """Probe the tokenizer's chat template for the text around an assistant answer.

    The conversation [user, assistant] must render as the generation prompt
    followed by the answer; what surrounds the answer, up to trailing
    whitespace, is the turn's prefix and suffix. A suffix that does not end in a
    special token gets the eos token, so the model always learns to stop.

    Raises:
        PipelineError: a template that does not render the generation prompt as a
            prefix of the conversation, or drops the answer.
    """
    if getattr(tokenizer, "chat_template", None) is None:
        tokenizer.chat_template = CHAT_TEMPLATE
    user = [{"role": "user", "content": "question"}]
    prompt = format_prompt(tokenizer, "question")
    full = tokenizer.apply_chat_template(
        [*user, {"role": "assistant", "content": _PROBE}], tokenize=False
    )
    at = full.find(_PROBE)
    if not full.startswith(prompt) or at < len(prompt):
        raise PipelineError(
            "the chat template does not render the generation prompt as the start of a "
            "conversation with an answer (config key 'sft.chat_template'); answer-only labels "
            "need prompt + answer to extend the prompt"
        )
    suffix = full[at + len(_PROBE) :].rstrip()
    suffix_ids = _ids(tokenizer, suffix) if suffix else []
    special = set(tokenizer.all_special_ids)
    if not suffix_ids or suffix_ids[-1] not in special:
        if tokenizer.eos_token_id is None:
            raise PipelineError(
                "the chat template ends an assistant turn without a special token and the "
                "tokenizer has no eos token: the model could not learn to stop"
            )
        suffix_ids.append(tokenizer.eos_token_id)
    return AssistantTurn(full[len(prompt) : at], tuple(suffix_ids))


def build_example(
    tokenizer, instruction: str, answer: str, max_len: int, turn: AssistantTurn | None = None
) -> dict[str, Any]:
    """Tokenise one example into ``input_ids`` and answer-only ``labels``.

    The answer keeps what it needs of ``max_len`` but the prompt always keeps at
    least half; an over-long instruction is cut (at token level, then re-rendered
    so the assistant header stays intact), then an over-long answer is cut (and
    loses its end-of-turn token, since it no longer ends there).

    Args:
        turn: :func:`assistant_turn` of the tokenizer (probed here when None).

    Returns:
        ``{"input_ids", "labels", "prompt_len", "truncated"}``.
    """
    turn = turn or assistant_turn(tokenizer)
    answer_ids = answer_tokens(tokenizer, turn, answer)
    prompt_ids = _ids(tokenizer, format_prompt(tokenizer, instruction))
    budget = max(max_len - len(answer_ids), max_len // 2)
    truncated = False
    if len(prompt_ids) > budget:
        truncated = True
        overhead = len(_ids(tokenizer, format_prompt(tokenizer, "")))
        instr_ids = _ids(tokenizer, instruction)
        keep = max(budget - overhead, 1)
        while True:
            cut = tokenizer.decode(instr_ids[:keep], skip_special_tokens=True)
            prompt_ids = _ids(tokenizer, format_prompt(tokenizer, cut))
            if len(prompt_ids) <= budget or keep <= 1:
                break
            keep -= max(1, len(prompt_ids) - budget)
        prompt_ids = prompt_ids[:budget]
    room = max_len - len(prompt_ids)
    if len(answer_ids) > room:
        truncated = True
        answer_ids = answer_ids[:room]
    return {
        "input_ids": prompt_ids + answer_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + answer_ids,
        "prompt_len": len(prompt_ids),
        "truncated": truncated,
    }


def read_sft_data(path: str | Path) -> list[dict]:
    """Read (instruction, output) rows from the filtered SFT Parquet table."""
    import polars as pl

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: SFT data file does not exist")
    df = pl.read_parquet(p)
    missing = [c for c in ("instruction", "output") if c not in df.columns]
    if missing:
        raise DataError(
            f"{p}: missing column(s) {', '.join(missing)} (has {', '.join(df.columns)})"
        )
    if df.height == 0:
        raise DataError(f"{p}: no training examples")
    rows = df.select("instruction", "output").to_dicts()
    for i, r in enumerate(rows):
        if r["instruction"] is None or r["output"] is None:
            raise DataError(f"{p}: row {i} has a null instruction or output")
    return rows


def split_heldout(n: int, eval_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded (train, eval) indices, each in table order; at least one of each when eval is on."""
    import numpy as np

    if eval_fraction <= 0:
        return list(range(n)), []
    n_eval = min(n - 1, max(1, round(n * eval_fraction)))
    if n_eval < 1:
        raise DataError(f"sft.eval_fraction={eval_fraction}: {n} example(s) cannot be split")
    held = set(np.random.default_rng(seed).permutation(n)[:n_eval].tolist())
    return [i for i in range(n) if i not in held], sorted(held)


def tokenize_examples(tokenizer, rows: list[dict], max_len: int) -> list[dict]:
    """``build_example`` over all rows, with a progress bar."""
    from tqdm import tqdm

    turn = assistant_turn(tokenizer)
    return [
        build_example(tokenizer, r["instruction"], r["output"], max_len, turn)
        for r in tqdm(rows, desc="tokenise SFT", unit="ex", mininterval=2)
    ]


def _dataset(examples: list[dict]):
    from datasets import Dataset

    return Dataset.from_dict(
        {"input_ids": [e["input_ids"] for e in examples], "labels": [e["labels"] for e in examples]}
    )


def lora_config(lora: dict[str, Any]):
    """A peft LoraConfig from config ``sft.lora`` ({r, alpha, dropout, target_modules})."""
    from peft import LoraConfig

    unknown = sorted(set(lora) - {"r", "alpha", "dropout", "target_modules"})
    if unknown:
        raise PipelineError(f"config key 'sft.lora': unknown key(s) {', '.join(unknown)}")
    target = lora.get("target_modules", "all-linear")
    return LoraConfig(
        r=int(lora.get("r", 16)),
        lora_alpha=float(lora.get("alpha", 32)),
        lora_dropout=float(lora.get("dropout", 0.05)),
        target_modules=target if isinstance(target, str) else list(target),
        task_type="CAUSAL_LM",
    )


def sft_config(args, *, batching: str, max_len: int, evaluate: bool):
    """TRL's SFTConfig with ``args`` (the shared TrainingArguments) and the batching mode."""
    from trl import SFTConfig

    fields = args.to_dict()
    fields["hub_token"] = args.hub_token  # to_dict hides it
    fields.update(
        packing=batching == "packed",
        packing_strategy="bfd",
        padding_free=batching == "padding_free",
        # Examples are already cut to max_len; padding-free without packing wants None.
        max_length=None if batching == "padding_free" else max_len,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=args.save_steps if evaluate else None,
        per_device_eval_batch_size=args.per_device_train_batch_size,
        dataset_num_proc=None,
    )
    return SFTConfig(**fields)


def trainer_class(fused_loss: bool):
    """SFTTrainer, or on CPU a subclass taking the loss from the model's own forward.

    TRL computes the loss with a fused LM head (log-probabilities in chunks, plus
    entropy and top-1 accuracy for its logs), which saves GPU memory on large
    vocabularies; on CPU it made each step of the embedded default's tiny model
    about 2.5x slower than the model's own loss, which is the same number (the
    same token-mean NLL, checked in the tests). Either way the cache stays off, as
    packed rows need (transformers reads their boundaries only without a cache).
    """
    from transformers import Trainer
    from trl import SFTTrainer

    if fused_loss:
        return SFTTrainer

    class ModelLossSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return Trainer.compute_loss(
                self, model, {**inputs, "use_cache": False}, return_outputs, num_items_in_batch
            )

    return ModelLossSFTTrainer


def _final_eval_callback():
    from transformers import TrainerCallback

    class EvaluateAtEnd(TrainerCallback):
        """Evaluate at the last step too (before its checkpoint, so a rerun finds the record)."""

        def on_step_end(self, args, state, control, **kwargs):
            if args.eval_strategy != "no" and state.global_step >= state.max_steps:
                control.should_evaluate = True
            return control

    return EvaluateAtEnd()


def merge_adapter(folder: Path, base: str, *, trust_remote_code: bool, allow_pickle: bool) -> bool:
    """Merge a saved LoRA adapter in ``folder`` into ``base``; save the merged model there.

    The adapter files move to ``folder/adapter/``. Returns False when ``folder``
    holds no adapter (full fine-tuning).
    """
    import torch
    from peft import PeftModel

    from domainllm.models.loading import load_causal_lm

    if not (folder / "adapter_config.json").is_file():
        return False
    adapter = folder / ADAPTER_DIR
    adapter.mkdir()
    for f in list(folder.iterdir()):
        if f.is_file() and (f.name.startswith("adapter_") or f.name == "README.md"):
            shutil.move(str(f), adapter / f.name)
    model, _ = load_causal_lm(
        base, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle, dtype=torch.float32
    )
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    merged.save_pretrained(str(folder), safe_serialization=True)
    log.info("merged the LoRA adapter into %s (adapter kept in %s)", folder, adapter)
    return True


def add_stop_token(folder: Path, stop_id: int) -> None:
    """Make generation stop at the template's end-of-turn token (generation_config.json)."""
    from transformers import GenerationConfig

    try:
        gen = GenerationConfig.from_pretrained(str(folder))
    except OSError:
        gen = GenerationConfig()
    eos = gen.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    if stop_id not in eos:
        gen.eos_token_id = [*eos, stop_id] if eos else stop_id
        gen.save_pretrained(str(folder))


def train_sft(
    base: str,
    data: str,
    output: str,
    *,
    max_len: int,
    batching: str = "padded",
    eval_fraction: float = 0.1,
    lora: dict[str, Any] | None = None,
    chat_template: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Instruction-tune ``base`` on the SFT table ``data``; save to ``output``.

    Args:
        base: save_pretrained folder (usually the CPT model).
        data: Parquet with ``instruction`` and ``output`` columns (R/data/sft.parquet).
        output: the trained folder (model, tokenizer with chat template, metrics, plot).
        max_len: longest tokenised example (prompt + answer); the packed row length.
        batching: "padded", "padding_free" or "packed" (see the module docstring).
        eval_fraction: share of the examples held out for the evaluation loss (0: none).
        lora: ``{r, alpha, dropout, target_modules}`` to train LoRA adapters, or None.
        chat_template: Jinja template file replacing the tokenizer's, or None.
        **options: the options both stages share, :class:`~domainllm.train.common.TrainOptions`
            (``checkpoint_dir``, ``max_steps``, ``batch_size``, ``learning_rate``,
            ``save_steps`` and ``seed`` are required).

    Returns:
        The metrics written to train_metrics.json.
    """
    if batching not in BATCHING:
        raise PipelineError(
            f"config key 'sft.batching': {batching!r} is not one of {', '.join(BATCHING)}"
        )
    if not 0.0 <= eval_fraction < 1.0:
        raise PipelineError(f"config key 'sft.eval_fraction': {eval_fraction} not in [0, 1)")
    template = None
    if chat_template is not None:
        if not Path(chat_template).is_file():
            raise DataError(f"{chat_template}: chat template file (sft.chat_template) not found")
        template = Path(chat_template).read_text(encoding="utf-8")
    peft_config = lora_config(lora) if lora is not None else None
    opts = common.TrainOptions(**options)
    opts.start()
    rows = read_sft_data(data)
    train_idx, eval_idx = split_heldout(len(rows), eval_fraction, opts.seed)
    args = opts.training_arguments(
        count_tokens="non_padding",
        drop_last=False,
        # Batches of similar lengths waste less compute on padding (random mega-batches).
        group_by_length=batching == "padded",
    )
    args = sft_config(args, batching=batching, max_len=max_len, evaluate=bool(eval_idx))
    held: dict[str, Any] = {}

    def build(model, tokenizer):
        if template is not None:
            tokenizer.chat_template = template
        examples = tokenize_examples(tokenizer, rows, max_len)
        train = [examples[i] for i in train_idx]
        held["eval"] = _dataset([examples[i] for i in eval_idx]) if eval_idx else None
        fields = {
            "examples": len(train),
            "eval_examples": len(eval_idx),
            "truncated_examples": int(sum(e["truncated"] for e in examples)),
            "answer_tokens": int(sum(len(e["input_ids"]) - e["prompt_len"] for e in train)),
            "stop_token_id": assistant_turn(tokenizer).stop_id,
        }
        return _dataset(train), None, fields

    def make_trainer(**kw):
        import torch

        return trainer_class(fused_loss=torch.cuda.is_available())(
            **kw, eval_dataset=held["eval"], peft_config=peft_config,
            callbacks=[_final_eval_callback()],
        )  # fmt: skip

    def finalize(folder: Path) -> None:
        from domainllm.models.tokenizer import load_tokenizer

        merge_adapter(
            folder, base, trust_remote_code=opts.trust_remote_code, allow_pickle=opts.allow_pickle
        )
        tokenizer = load_tokenizer(folder, trust_remote_code=opts.trust_remote_code)
        add_stop_token(folder, assistant_turn(tokenizer).stop_id)

    identity = {
        "data": common.folder_fingerprint(data),
        "max_len": max_len,
        "batching": batching,
        "eval_fraction": eval_fraction,
        "lora": lora,
        "chat_template": hashlib.sha256(template.encode()).hexdigest() if template else None,
    }
    extra = {
        "data": str(data),
        "max_len": max_len,
        "batching": batching,
        "eval_fraction": eval_fraction,
        "lora": lora,
        "chat_template": chat_template,
    }
    return common.run_stage(
        "sft", base, output, opts, args, identity, build, extra,
        trainer_factory=make_trainer, finalize=finalize,
    )  # fmt: skip


def _target_modules(text: str) -> str | list[str]:
    return text if text == "all-linear" else [m.strip() for m in text.split(",") if m.strip()]


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    from domainllm.logs import log_to

    parser = argparse.ArgumentParser(
        prog="python -m domainllm.train.sft",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for name, help_text in CLI_PATHS.items():
        parser.add_argument(f"--{name}", required=True, help=help_text)
    parser.add_argument("--max-len", type=int, default=256)
    parser.add_argument("--batching", choices=BATCHING, default="padded")
    parser.add_argument("--eval-fraction", type=float, default=0.1)
    parser.add_argument("--chat-template", default=None, help="Jinja chat template file")
    parser.add_argument("--lora-r", type=int, default=None, help="LoRA rank (unset: full tuning)")
    parser.add_argument("--lora-alpha", type=float, default=32.0)
    parser.add_argument("--lora-dropout", type=float, default=0.05)
    parser.add_argument(
        "--lora-target-modules", type=_target_modules, default="all-linear",
        help="all-linear, or comma-separated module names",
    )  # fmt: skip
    common.add_common_cli(parser)
    a = parser.parse_args(argv)
    lora = None
    if a.lora_r is not None:
        lora = {"r": a.lora_r, "alpha": a.lora_alpha, "dropout": a.lora_dropout,
                "target_modules": a.lora_target_modules}  # fmt: skip
    with log_to(a.log if common.is_main_process() else None):
        train_sft(
            *(getattr(a, name) for name in CLI_PATHS),
            max_len=a.max_len, batching=a.batching, eval_fraction=a.eval_fraction, lora=lora,
            chat_template=a.chat_template, **common.common_kwargs(a),
        )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
