"""Human-feedback pairs (HH-RLHF style) as labelled texts for training evaluators.

Each input line is ``{"chosen": str, "rejected": str}``: the chosen dialogue is
labelled good (1), the rejected one bad (0). Pairs are the unit of sampling and
splitting, so both texts of a pair always land in the same split and the test
set can measure paired accuracy.
"""

from __future__ import annotations

import logging

import numpy as np

from domainllm.errors import DataError, PipelineError
from domainllm.io import read_jsonl

log = logging.getLogger(__name__)


def read_pairs(path: str) -> tuple[list[tuple[str, str]], dict]:
    """Read ``(chosen, rejected)`` pairs of one file.

    Pairs with identical or empty texts carry no preference and are skipped (counted).

    Raises:
        DataError: naming file and line of a line without string ``chosen``/``rejected``.
    """
    pairs, skipped = [], {"identical": 0, "empty": 0}
    for lineno, obj in read_jsonl(path):
        chosen, rejected = obj.get("chosen"), obj.get("rejected")
        if not isinstance(chosen, str) or not isinstance(rejected, str):
            raise DataError(f"{path}:{lineno}: expected string fields 'chosen' and 'rejected'")
        if not chosen.strip() or not rejected.strip():
            skipped["empty"] += 1
        elif chosen == rejected:
            skipped["identical"] += 1
        else:
            pairs.append((chosen.strip(), rejected.strip()))
    if not pairs:
        raise DataError(f"{path}: no usable chosen/rejected pairs")
    return pairs, skipped


def _quotas(available: list[int], total: int) -> list[int]:
    """Split ``total`` as evenly as possible over files holding ``available`` pairs each."""
    quotas = [0] * len(available)
    remaining = min(total, sum(available))
    while remaining > 0:
        open_files = [i for i, a in enumerate(available) if quotas[i] < a]
        share = max(1, remaining // len(open_files))
        for i in open_files:
            take = min(share, available[i] - quotas[i], remaining)
            quotas[i] += take
            remaining -= take
            if remaining == 0:
                break
    return quotas


def prepare_feedback(
    paths: list[str],
    train_output: str,
    test_output: str,
    *,
    max_pairs: int = 2000,
    test_fraction: float = 0.25,
    seed: int = 1234,
) -> dict:
    """Sample pairs evenly across ``paths``, split them, write train/test Parquet files.

    Args:
        paths: JSONL(.gz) files of ``{chosen, rejected}``.
        train_output: feedback_train.parquet (pair_id, text, label).
        test_output: feedback_test.parquet (same columns).
        max_pairs: pairs taken at most, as evenly as possible from each file.
        test_fraction: share of pairs in the test split.
        seed: seeds sampling and splitting.

    Returns:
        Counts per file and split.
    """
    import polars as pl

    from domainllm.io import write_parquet

    if not paths:
        raise PipelineError("config key 'data.feedback.paths': no files given")
    if not 0 < test_fraction < 1:
        raise PipelineError(
            f"config key 'data.feedback.test_fraction': {test_fraction} not in (0, 1)"
        )
    rng = np.random.default_rng(seed)
    per_file = [read_pairs(p) for p in paths]
    quotas = _quotas([len(pairs) for pairs, _ in per_file], max_pairs)
    chosen_pairs, stats = [], {"files": {}}
    for path, (pairs, skipped), quota in zip(paths, per_file, quotas, strict=True):
        # A random sample, not the first lines: files may be ordered by topic.
        idx = np.sort(rng.choice(len(pairs), size=quota, replace=False))
        chosen_pairs.extend(pairs[i] for i in idx)
        stats["files"][str(path)] = {"available": len(pairs), "taken": quota, "skipped": skipped}
    n = len(chosen_pairs)
    n_test = min(n - 1, max(1, round(n * test_fraction)))
    if n < 2:
        raise DataError(f"{', '.join(map(str, paths))}: need at least 2 pairs to split, got {n}")
    test_ids = set(rng.permutation(n)[:n_test].tolist())

    def frame(ids):
        rows = {"pair_id": [], "text": [], "label": []}
        for pid in ids:
            good, bad = chosen_pairs[pid]
            rows["pair_id"] += [pid, pid]
            rows["text"] += [good, bad]
            rows["label"] += [1, 0]
        return pl.DataFrame(
            rows, schema={"pair_id": pl.Int64, "text": pl.String, "label": pl.Int64}
        )

    train = frame(i for i in range(n) if i not in test_ids)
    test = frame(i for i in range(n) if i in test_ids)
    write_parquet(train, train_output)
    write_parquet(test, test_output)
    stats.update(pairs=n, train_pairs=n - n_test, test_pairs=n_test)
    log.info("feedback pairs: %s", stats)
    return stats
