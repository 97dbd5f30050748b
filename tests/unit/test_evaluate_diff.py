"""`domainllm diff`: two run folders, two versions of one table, the gate, the renderings.

The run folders are written here in the layout the workflow writes (version records,
per-item scores, evaluator score files, the evaluation table, model folders with
safetensors, the selection report and shard manifests); the git-revision side is
tested on a real DVC repository in tests/workflow/test_dvc.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from domainllm.cli import main
from domainllm.errors import PipelineError
from domainllm.evaluate.diff import diff, paired_bootstrap
from domainllm.evaluate.version import items_frame

N = 40  # JCommonsenseQA items
GEN = [f"elyza/{i}" for i in range(12)]  # free-form answers


def _model(folder: Path, quantised: bool) -> None:
    from safetensors.numpy import save_file

    folder.mkdir(parents=True)
    config = {"model_type": "llama", "hidden_size": 16, "num_hidden_layers": 1, "vocab_size": 32}
    if quantised:
        tensors = {
            "emb.weight": np.zeros((32, 16), np.float32),
            # 8 x 16 four-bit weights packed eight to an int32, with their metadata.
            "proj.weight_packed": np.zeros((8, 2), np.int32),
            "proj.weight_scale": np.ones((8, 1), np.float32),
            "proj.weight_shape": np.array([8, 16], np.int64),
        }
        config["quantization_config"] = {
            "quant_method": "compressed-tensors",
            "format": "pack-quantized",
            "ignore": ["lm_head"],
            "config_groups": {
                "group_0": {
                    "weights": {
                        "num_bits": 4,
                        "strategy": "group",
                        "group_size": 128,
                        "symmetric": True,
                    },
                    "input_activations": None,
                }
            },
        }
    else:
        tensors = {
            "emb.weight": np.zeros((32, 16), np.float32),
            "proj.weight": np.zeros((8, 16), np.float32),
        }
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))


def _run(root: Path, *, shift: float, threshold: float, kept: dict[str, int]) -> Path:
    """A run folder root/results with versions sft and sft-gptq; ``shift`` moves the
    quantised version's JCommonsenseQA answers, ``threshold``/``kept`` its corpus."""
    rng = np.random.default_rng(0)
    results = root / "results"
    versions = results / "eval" / "versions"
    versions.mkdir(parents=True)
    table_rows = []
    for version, quantised in (("sft", False), ("sft-gptq", True)):
        _model(results / "models" / "m" / version, quantised)
        p = 0.6 - (shift if quantised else 0.0)
        correct = (rng.random(N) < p).astype(float)
        chrf = np.linspace(10, 40, len(GEN)) - (5.0 if quantised else 0.0)
        evaluator = [0.9 if quantised and i == 5 else 0.5 for i in range(len(GEN))]
        outputs = [f"{version} の答え {i}" + ("" if quantised and i == 3 else " です") for i in GEN]
        rows = [("jcqa", f"q{i}", "jcqa_correct", float(c), None) for i, c in enumerate(correct)]
        for i, (item, out) in enumerate(zip(GEN, outputs, strict=True)):
            rows.append(("generation", item, "chrf", float(chrf[i]), out))
            rows.append(("generation", item, "evaluator_score", evaluator[i], out))
        items_frame(rows).write_parquet(versions / f"{version}.items.parquet")
        metrics = {
            "jcqa_acc": float(correct.mean()),
            "chrf_sentence_mean": float(chrf.mean()),
            "evaluator_score": float(np.mean(evaluator)),
            "domain_bits_per_char": 3.0 + (0.1 if quantised else 0.0),
        }
        record = {"version": version, "model": f"results/models/m/{version}", "metrics": metrics}
        (versions / f"{version}.json").write_text(json.dumps(record))
        # A judge that gives no verdict on the first two answers of the quantised model.
        scores = results / "eval" / "scores" / "judge"
        scores.mkdir(parents=True, exist_ok=True)
        judged = [None if quantised and k < 2 else 0.7 for k in range(len(GEN))]
        pl.DataFrame(
            {
                "evaluator": "judge",
                "kind": "judge",
                "version": version,
                "abstains": True,
                "item_id": GEN,
                "output": outputs,
                "score": pl.Series(judged, dtype=pl.Float64),
            }
        ).write_parquet(scores / f"{version}.parquet")
        verdicts = [s for s in judged if s is not None]
        table_rows.append(
            {
                "version": version,
                "model": record["model"],
                **metrics,
                "judge_score": float(np.mean(verdicts)),
                "judge_no_verdict_rate": judged.count(None) / len(judged),
            }
        )
    pl.DataFrame(table_rows).write_parquet(results / "eval" / "table.parquet")
    corpus = results / "corpus"
    corpus.mkdir()
    per_source = {s: {"n_in": 100, "n_kept": k, "mean_score": 0.1} for s, k in kept.items()}
    (corpus / "selection.json").write_text(
        json.dumps(
            {
                "backend": "tfidf-svd",
                "model": None,
                "method": "quantile",
                "value": 0.5,
                "threshold": threshold,
                "n_in": 100 * len(kept),
                "n_kept": sum(kept.values()),
                "per_source": per_source,
            }
        )
    )
    shards = results / "shards" / "tok"
    shards.mkdir(parents=True)
    # The shards hold every kept document: one of wiki's in validation, the rest in train.
    train = {s: {"docs": k, "tokens": 10 * k} for s, k in kept.items()}
    train["wiki"] = {"docs": kept["wiki"] - 1, "tokens": 10 * kept["wiki"] - 10}
    n = sum(kept.values())
    manifest = {
        "tokenizer": {"name": "tok"},
        "splits": {
            "train": {"total_docs": n - 1, "total_tokens": 10 * n - 10, "sources": train},
            "validation": {
                "total_docs": 1,
                "total_tokens": 10,
                "sources": {"wiki": {"docs": 1, "tokens": 10}},
            },
        },
    }
    (shards / "manifest.json").write_text(json.dumps(manifest))
    return results


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("diff")
    a = _run(root / "a", shift=0.0, threshold=0.2, kept={"wiki": 50, "news": 20})
    b = _run(root / "b", shift=0.4, threshold=0.3, kept={"wiki": 40, "news": 5})
    return a, b


def test_two_versions_of_one_table(runs, tmp_path):
    a, _ = runs
    result, failed = diff("sft", "sft-gptq", results=str(a), out=str(tmp_path / "d"))
    assert failed == []
    rows = {r["metric"]: r for r in result["metrics"]}
    # Every metric of the table, the evaluators' scores included.
    assert set(rows) == {
        "jcqa_acc",
        "chrf_sentence_mean",
        "evaluator_score",
        "domain_bits_per_char",
        "judge_score",
        "judge_no_verdict_rate",
    }
    chrf = rows["chrf_sentence_mean"]
    assert chrf["delta"] == pytest.approx(-5.0) and chrf["n"] == len(GEN)
    # Every item 5 lower: the paired interval is the point itself (an unpaired one is wide).
    assert chrf["ci_low"] == pytest.approx(-5.0) and chrf["ci_high"] == pytest.approx(-5.0)
    assert chrf["p_value"] == pytest.approx(1 / 2000)
    assert rows["jcqa_acc"]["n"] == N
    assert rows["judge_no_verdict_rate"]["delta"] == pytest.approx(2 / 12)
    assert rows["judge_no_verdict_rate"]["higher_is_better"] is False
    # The judge's score is paired over the answers both sides have a verdict for.
    assert rows["judge_score"]["n"] == len(GEN) - 2 and rows["judge_score"]["ci_low"] == 0
    assert "ci_low" not in rows["domain_bits_per_char"]  # corpus-level: no items
    # The example that changed: the one answer the evaluator scores differently.
    assert [e["item_id"] for e in result["examples"]] == ["elyza/5"]
    (ex,) = result["examples"]
    assert ex["output_a"] == "sft の答え elyza/5 です"
    assert ex["output_b"] == "sft-gptq の答え elyza/5 です"
    assert (ex["score_a"], ex["score_b"]) == (0.5, 0.9)
    md = (tmp_path / "d.md").read_text()
    assert "## Examples whose evaluator_score changed most" in md
    assert "| elyza/5 | 0.5 | 0.9 | sft の答え elyza/5 です | sft-gptq の答え elyza/5 です |" in md
    page = (tmp_path / "d.html").read_text()
    assert "<td>sft-gptq の答え elyza/5 です</td>" in page and "<h2>Models</h2>" in page
    saved = json.loads((tmp_path / "d.json").read_text())
    assert saved["metrics"] == json.loads(json.dumps(result["metrics"]))


def test_models_differ_in_scheme_and_size_not_parameters(runs):
    a, _ = runs
    result, _ = diff("sft", "sft-gptq", results=str(a))
    ia, ib = result["a"]["info"], result["b"]["info"]
    # 32 x 16 embedding + 8 x 16 projection; packed 4-bit weights count as what they hold.
    assert ia["parameters"] == ib["parameters"] == 32 * 16 + 8 * 16
    assert ia["quantisation"] == "none (full precision)"
    assert ib["quantisation"].startswith("W4A16, group 128, symmetric, not lm_head")
    assert ib["weights_mb"] < ia["weights_mb"] and ib["size_on_disk_mb"] > 0
    assert ia["config.hidden_size"] == ib["config.hidden_size"] == 16


def test_two_run_folders_show_data_differences(runs, tmp_path):
    a, b = runs
    result, _ = diff(f"{a}:sft-gptq", f"{b}:sft-gptq", out=str(tmp_path / "d"))
    da, db = result["data"]["a"], result["data"]["b"]
    assert (da["selection threshold"], db["selection threshold"]) == (0.2, 0.3)
    assert (da["news: documents kept"], db["news: documents kept"]) == (20, 5)
    assert (da["documents kept"], db["documents kept"]) == (70, 45)
    # Shards: train and validation together, per source.
    assert (da["wiki: documents in shards (tok)"], db["wiki: documents in shards (tok)"]) == (
        50,
        40,
    )
    assert (da["shards (tok): tokens"], db["shards (tok): tokens"]) == (700, 450)
    md = (tmp_path / "d.md").read_text()
    assert "| selection threshold | 0.2 | 0.3 | 0.1 |" in md
    assert "| news: tokens in shards (tok) | 200 | 50 | -150 |" in md
    assert result["a"]["where"] == str(a) and result["b"]["where"] == str(b)


def test_a_moved_run_folder_still_finds_its_models(runs, tmp_path):
    """Records name models relative to the run's working directory (results/models/...)."""
    a, _ = runs
    moved = tmp_path / "elsewhere" / "results"
    moved.parent.mkdir()
    moved.symlink_to(a, target_is_directory=True)
    result, _ = diff(f"{moved}:sft", "sft-gptq", results=str(a))
    assert result["a"]["info"]["parameters"] == 32 * 16 + 8 * 16


def test_the_gate_and_the_exit_codes(runs, capsys):
    a, b = runs
    # B's answers are 0.4 less often correct: a regression on jcqa_acc beyond 0.1.
    args = ["diff", f"{a}:sft-gptq", f"{b}:sft-gptq"]
    assert main([*args, "--fail-on", "jcqa_acc:0.1"]) == 3
    out = capsys.readouterr()
    assert "jcqa_acc" in out.err and "# " in out.out
    assert main([*args, "--fail-on", "jcqa_acc:0.9"]) == 0
    # Lower is better: bits per char rose by 0.1 in one table.
    one = ["diff", "sft", "sft-gptq", "--results", str(a)]
    assert main([*one, "--fail-on", "domain_bits_per_char:0.05"]) == 3
    assert main([*one, "--fail-on", "domain_bits_per_char:0.2"]) == 0
    capsys.readouterr()
    assert main([*one, "--fail-on", "nonsense:1"]) == 1
    assert "unknown metric 'nonsense'" in capsys.readouterr().err
    assert main(["diff", "sft", "rlhf", "--results", str(a)]) == 1
    assert "no evaluation of version 'rlhf'" in capsys.readouterr().err


def test_an_unknown_side_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not a git or DVC repository
    with pytest.raises(PipelineError, match="neither a run folder nor a git revision"):
        diff("nosuchrev:sft", "sft", results="results")


def test_paired_bootstrap():
    a = np.zeros(50)
    assert paired_bootstrap(a, a + 1)["p_value"] < 0.01
    same = paired_bootstrap(a, np.tile([1.0, -1.0], 25))
    assert same["ci_low"] < 0 < same["ci_high"] and same["p_value"] > 0.5
    # The median's difference: one large outlier moves the mean, not the median.
    b = np.r_[np.ones(49), 1000.0]
    med = paired_bootstrap(np.zeros(50), b, aggregate="median")
    assert med["delta"] == 1.0 and med["ci_low"] == med["ci_high"] == 1.0
    assert paired_bootstrap(np.zeros(50), b)["delta"] == pytest.approx(20.98)
