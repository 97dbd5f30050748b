"""The metrics base-model selection reports and ranks on, and which way is better.

A registry in the manner of lm-evaluation-harness's ``higher_is_better``: every
candidate gets the :data:`CANDIDATE_METRICS`, and every multiple-choice task
file adds ``<task>_<metric>`` columns for its :data:`TASK_METRICS`. The module is
light (no torch), so the workflow checks ``base.selection.weights`` against it
while parsing the Snakefile.
"""

from __future__ import annotations

from domainllm.errors import ConfigError

# name -> (higher is better, description)
CANDIDATE_METRICS: dict[str, tuple[bool, str]] = {
    "chars_per_token": (True, "characters of held-out domain text per token"),
    "bytes_per_token": (True, "UTF-8 bytes of held-out domain text per token"),
    "unk_rate": (False, "share of unknown tokens in the held-out domain text"),
    "lost_char_rate": (
        False,
        "share of the held-out domain text's characters its tokens do not give back "
        "(unknown or dropped)",
    ),
    "corpus_tokens": (
        False,
        "tokens the whole selected domain corpus takes (one eos per document, as the shards "
        "count them): what one epoch of continued pre-training costs",
    ),
    "domain_bits_per_char": (
        False,
        "sliding-window cross-entropy of held-out domain text per character "
        "(comparable across tokenizers)",
    ),
    "domain_perplexity": (
        False,
        "sliding-window token perplexity of held-out domain text "
        "(per token: not comparable across tokenizers)",
    ),
}
# Multiple-choice metrics, as lm-evaluation-harness defines them.
TASK_METRICS: dict[str, tuple[bool, str]] = {
    "acc": (True, "accuracy: the choice with the highest log-likelihood"),
    "acc_norm": (True, "accuracy by log-likelihood per character of the choice"),
    "acc_bytes": (True, "accuracy by log-likelihood per UTF-8 byte of the choice"),
}


def task_columns(task_name: str, metrics: list[str]) -> dict[str, bool]:
    """``{"<task>_<metric>": higher_is_better}`` for one task's metrics."""
    return {f"{task_name}_{m}": TASK_METRICS[m][0] for m in metrics}


def selection_metrics(tasks=()) -> dict[str, bool]:
    """Every rankable metric -> higher is better: the candidate metrics, then the tasks'.

    Args:
        tasks: :class:`domainllm.models.tasks.TaskSpec` objects (anything with
            ``name`` and ``metrics``).
    """
    out = {name: hi for name, (hi, _) in CANDIDATE_METRICS.items()}
    for task in tasks:
        out.update(task_columns(task.name, task.metrics))
    return out


def check_weights(
    weights: dict, metrics: dict[str, bool], where: str = "base.selection.weights"
) -> None:
    """Raise ConfigError naming the key of a weight on a metric nobody computes.

    Args:
        weights: metric -> weight (from the config).
        metrics: the rankable metrics (:func:`selection_metrics`).
        where: the config key the weights come from, for the message.
    """
    unknown = sorted(set(weights) - set(metrics))
    if unknown:
        raise ConfigError(
            f"config key '{where}': unknown metric(s) {', '.join(unknown)} "
            f"(known: {', '.join(metrics)}; task metrics come from base.selection.tasks)"
        )
    for name, w in weights.items():
        if not isinstance(w, int | float) or isinstance(w, bool) or w < 0:
            raise ConfigError(f"config key '{where}.{name}': weight {w!r} is not a number >= 0")
