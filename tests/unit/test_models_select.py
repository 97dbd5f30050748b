"""Tests of domainllm.models.select: ranking, weighting and the override."""

from __future__ import annotations

import json

import polars as pl
import pytest

from domainllm.errors import PipelineError
from domainllm.models.select import normalised_ranks, select_base

WEIGHTS = {"chars_per_token": 1.0, "domain_bits_per_char": 1.0, "jcqa_acc_norm": 1.0}


TASK_DIRECTIONS = {"jcqa_acc": True, "jcqa_acc_norm": True}


def write_scores(
    tmp_path,
    rows: dict[str, tuple[float, float, float]],
    extra: dict | None = None,
    lost: dict[str, float] | None = None,
) -> list[str]:
    """Score files as score_base writes them; ``extra`` adds task columns per candidate,
    ``lost`` a candidate's lost_char_rate (0 otherwise)."""
    paths = []
    for name, (cpt, bpc, acc) in rows.items():
        p = tmp_path / "scores" / f"{name}.json"
        p.parent.mkdir(exist_ok=True)
        more = (extra or {}).get(name, {})
        p.write_text(
            json.dumps(
                {
                    "candidate": name,
                    "model_dir": f"results/base/{name}",
                    "parameters": 1000,
                    "vocab_size": 500,
                    "chars_per_token": cpt,
                    "domain_bits_per_char": bpc,
                    "jcqa_acc_norm": acc,
                    "jcqa_acc": acc,
                    "domain_perplexity": 10.0,
                    "lost_char_rate": (lost or {}).get(name, 0.0),
                    **more,
                    "higher_is_better": {**TASK_DIRECTIONS, **{k: True for k in more}},
                    "timings": {"perplexity": 1.0},
                }
            )
        )
        paths.append(str(p))
    return paths


def run(tmp_path, paths, weights=WEIGHTS, choose="auto", max_lost_char_rate=0.001):
    out = {
        k: str(tmp_path / f)
        for k, f in (
            ("table", "table.parquet"),
            ("table_md", "table.md"),
            ("chosen", "chosen.json"),
        )
    }
    result = select_base(
        paths,
        out["table"],
        out["table_md"],
        out["chosen"],
        weights=weights,
        choose=choose,
        max_lost_char_rate=max_lost_char_rate,
    )
    return (
        result,
        pl.read_parquet(out["table"]),
        (tmp_path / "table.md").read_text(),
        json.loads((tmp_path / "chosen.json").read_text()),
    )


def test_normalised_ranks():
    assert normalised_ranks([3.0, 1.0, 2.0], higher_better=True) == [1.0, 0.0, 0.5]
    assert normalised_ranks([3.0, 1.0, 2.0], higher_better=False) == [0.0, 1.0, 0.5]
    assert normalised_ranks([1.0, 1.0, 0.0], higher_better=True) == [0.75, 0.75, 0.0]
    assert normalised_ranks([float("nan"), 2.0], higher_better=False) == [0.0, 1.0]
    assert normalised_ranks([5.0], higher_better=True) == [1.0]


def test_weighted_ranks_choose_the_best(tmp_path):
    paths = write_scores(
        tmp_path,
        {
            "a": (1.5, 6.0, 0.20),  # best tokenizer and bits/char
            "b": (0.4, 9.0, 0.30),  # best JCQA only
            "c": (1.0, 7.0, 0.25),
        },
    )
    result, table, md, chosen = run(tmp_path, paths)
    assert table["candidate"].to_list() == ["a", "c", "b"]  # sorted by score
    assert table["score"].to_list() == pytest.approx([2.0, 1.5, 1.0])
    assert table.filter(pl.col("candidate") == "b")["rank_jcqa_acc_norm"].item() == 1.0
    assert chosen == result
    assert chosen["name"] == "a" and chosen["path"] == "results/base/a"
    assert chosen["override"] is False and chosen["scores"]["chars_per_token"] == 1.5
    assert "| a |" in md and "Chosen: **a**" in md and "override" not in md
    # Every metric is reported on its own, with its direction and weight.
    assert "| domain_bits_per_char | ↓ | 1 | 6 | 7 | 9 |" in md
    assert "| jcqa_acc | ↑ | 0 | 0.2 | 0.25 | 0.3 |" in md
    assert "| unk_rate | ↓ | 0 | – | – | – |" in md  # not in these score files
    assert "rank_jcqa_acc" in table.columns and "timings" not in chosen["scores"]
    assert chosen["weights"] == WEIGHTS
    # Weighting JCQA heavily makes b win.
    weights = {**WEIGHTS, "jcqa_acc_norm": 5.0}
    assert run(tmp_path, paths, weights=weights)[3]["name"] == "b"
    # A zero weight ignores a metric: bits/char alone picks a.
    weights = {"chars_per_token": 0.0, "domain_bits_per_char": 1.0, "jcqa_acc_norm": 0.0}
    assert run(tmp_path, paths, weights=weights)[3]["name"] == "a"


def test_override_is_recorded(tmp_path):
    paths = write_scores(tmp_path, {"a": (1.5, 6.0, 0.2), "b": (0.4, 9.0, 0.3)})
    _, table, md, chosen = run(tmp_path, paths, choose="b")
    assert chosen["name"] == "b" and chosen["override"] is True and chosen["best_ranked"] == "a"
    assert chosen["path"] == "results/base/b"
    assert table.filter(pl.col("chosen"))["candidate"].to_list() == ["b"]
    assert "override" in md and "best was a" in md


def test_a_tokenizer_that_loses_characters_cannot_win(tmp_path, caplog):
    """Losing characters flatters chars/token and bits/char; such a candidate is passed over."""
    rows = {"lossy": (2.0, 5.0, 0.3), "a": (1.5, 6.0, 0.2), "b": (0.4, 9.0, 0.25)}
    paths = write_scores(tmp_path, rows, lost={"lossy": 0.004, "b": 0.001})
    with caplog.at_level("WARNING", logger="domainllm.models.select"):
        _, table, md, chosen = run(tmp_path, paths)
    assert "lossy loses 0.4% of the held-out domain characters" in caplog.text
    # lossy ranks first on every weighted metric, but a wins; b sits at the limit.
    assert table["candidate"].to_list()[0] == "lossy"
    assert chosen["name"] == "a" and chosen["best_ranked"] == "a"
    assert chosen["ineligible"] == ["lossy"] and chosen["override"] is False
    assert dict(zip(table["candidate"], table["eligible"], strict=True)) == {
        "lossy": False,
        "a": True,
        "b": True,
    }
    assert "Not eligible to win: lossy" in md
    assert "| lost_char_rate | ↓ | 0 | 0.004 | 0 | 0.001 |" in md
    # No limit: lossy wins; an override may name it.
    assert run(tmp_path, paths, max_lost_char_rate=None)[3]["name"] == "lossy"
    assert run(tmp_path, paths, choose="lossy")[3]["name"] == "lossy"
    # Nobody eligible: auto stops, naming the key and each loss.
    (tmp_path / "all").mkdir()
    paths = write_scores(tmp_path / "all", rows, lost={"lossy": 0.004, "a": 0.002, "b": 0.003})
    with pytest.raises(PipelineError, match=r"max_lost_char_rate.*lossy 0\.4%, a 0\.2%, b 0\.3%"):
        run(tmp_path / "all", paths)
    assert not (tmp_path / "all" / "chosen.json").exists()


def test_bad_selection_requests(tmp_path):
    paths = write_scores(tmp_path, {"a": (1.5, 6.0, 0.2), "b": (0.4, 9.0, 0.3)})
    with pytest.raises(PipelineError, match="base.choose.*'zzz'"):
        run(tmp_path, paths, choose="zzz")
    with pytest.raises(PipelineError, match="weights.*bleu"):
        run(tmp_path, paths, weights={**WEIGHTS, "bleu": 1.0})
    with pytest.raises(PipelineError, match="duplicate"):
        run(tmp_path, paths + paths[:1])
    assert not (tmp_path / "chosen.json").exists()


def test_single_candidate_wins(tmp_path):
    paths = write_scores(tmp_path, {"only": (1.0, 5.0, 0.2)})
    assert run(tmp_path, paths)[3]["name"] == "only"


def test_task_metrics_from_task_files_can_be_weighted(tmp_path):
    """A task file's columns (here chabsa_sentiment_acc) are ranked and may carry weight."""
    extra = {"a": {"chabsa_sentiment_acc": 0.4}, "b": {"chabsa_sentiment_acc": 0.6}}
    paths = write_scores(tmp_path, {"a": (1.5, 6.0, 0.2), "b": (0.4, 9.0, 0.3)}, extra)
    _, table, md, chosen = run(tmp_path, paths)
    assert chosen["name"] == "a"
    assert table["chabsa_sentiment_acc"].to_list() == [0.4, 0.6]
    assert "| chabsa_sentiment_acc | ↑ | 0 | 0.4 | 0.6 |" in md
    weights = {"chars_per_token": 1.0, "chabsa_sentiment_acc": 3.0}
    _, table, md, chosen = run(tmp_path, paths, weights=weights)
    assert chosen["name"] == "b" and chosen["score"] == pytest.approx(3.0)
    assert "| chabsa_sentiment_acc | ↑ | 3 |" in md
    # A weight on a task nobody was scored on is refused, naming the config key.
    with pytest.raises(PipelineError, match="base.selection.weights.*jsts_acc"):
        run(tmp_path, paths, weights={"jsts_acc": 1.0})


def test_directions_must_agree(tmp_path):
    paths = write_scores(tmp_path, {"a": (1.5, 6.0, 0.2), "b": (0.4, 9.0, 0.3)})
    row = json.loads(open(paths[1]).read())
    row["higher_is_better"]["jcqa_acc"] = False
    open(paths[1], "w").write(json.dumps(row))
    with pytest.raises(PipelineError, match="b.json.*jcqa_acc"):
        run(tmp_path, paths)
