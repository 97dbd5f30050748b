"""config/examples/: real configurations validate, and their DAGs build.

gpu_cluster.yaml names raw corpora this checkout does not hold; its dry run uses a
working directory with empty stand-ins at those paths (a dry run only checks that
inputs exist).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from domainllm.config import load_config
from domainllm.models.loading import looks_local
from domainllm.train.common import PEAK_FLOPS
from tests.conftest import REPO, make_workdir, snakemake

EXAMPLES = REPO / "config" / "examples"
GPU_CLUSTER = EXAMPLES / "gpu_cluster.yaml"
H100_MFU = EXAMPLES / "h100_mfu.yaml"
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _examples() -> list[Path]:
    return sorted(EXAMPLES.glob("*.yaml"))


def test_the_examples_are_there():
    assert {p.name for p in _examples()} >= {"gpu_cluster.yaml", "h100_mfu.yaml"}


@pytest.mark.parametrize("path", _examples(), ids=lambda p: p.name)
def test_example_validates_against_the_schema(path):
    cfg = load_config(path)
    # Filled with defaults, so every stage sees a complete config.
    assert cfg["cpt"]["launcher"] in {"none", "torchrun", "deepspeed"}
    for stage in ("cpt", "sft"):
        if cfg[stage]["deepspeed"]:
            assert (REPO / cfg[stage]["deepspeed"]).is_file()


def _key_paths(node: dict, prefix: str = "") -> set[str]:
    out = set()
    for key, value in node.items():
        path = f"{prefix}.{key}" if prefix else key
        out.add(path)
        if isinstance(value, dict):
            out |= _key_paths(value, path)
    return out


def test_gpu_cluster_sets_every_key_the_default_sets():
    # Snakemake merges --configfile over config/config.yaml: a key left out here
    # would silently take the tiny default's value (a 250-character judge field, a
    # CPU quality device, ...).
    default = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))
    example = yaml.safe_load(GPU_CLUSTER.read_text(encoding="utf-8"))
    missing = sorted(_key_paths(default) - _key_paths(example))
    assert not missing, f"gpu_cluster.yaml inherits these keys from config.yaml: {missing}"


def test_gpu_cluster_is_a_multi_gpu_configuration_of_real_models():
    cfg = load_config(GPU_CLUSTER)
    candidates = cfg["base"]["candidates"]
    assert len(candidates) >= 2
    for c in candidates:
        assert "build" not in c and HUB_ID.fullmatch(c["source"]), c
        assert not looks_local(c["source"]), c["source"]
        assert not c["trust_remote_code"] and not c["allow_pickle"]
    cpt = cfg["cpt"]
    assert cpt["bf16"] and cpt["deepspeed"] == "config/deepspeed/zero2.json"
    assert (cpt["launcher"], cpt["gpus_per_node"], cpt["nodes"]) == ("torchrun", 8, 2)
    assert cpt["peak_flops"] == PEAK_FLOPS["H100"]
    assert cpt["seq_len"] == 4096 and cfg["sft"]["bf16"]
    assert cfg["generate"]["backend"] == "vllm"
    assert cfg["generate"]["vllm"]["tensor_parallel_size"] >= 1
    select = cfg["corpus"]["select"]
    assert select["backend"] == "sentence-transformers" and HUB_ID.fullmatch(select["model"])
    wiki = cfg["corpus"]["sources"][0]
    assert (wiki["format"], wiki["on_error"]) == ("mediawiki", "error")
    bert = [e for e in cfg["evaluate"]["evaluators"] if e["type"] == "bert"]
    assert [e["model"] for e in bert] == ["ku-nlp/deberta-v3-base-japanese"]
    judge = cfg["evaluate"]["judge"]
    assert judge["backend"] == "openai" and judge["tokenizer"]
    # vLLM must report log-probabilities after the judge's logit_bias.
    extra = cfg["generate"]["serve"]["extra_args"]
    assert extra[extra.index("--logprobs-mode") + 1] == "processed_logprobs"
    q = cfg["quantize"]
    assert (q["scheme"], q["group_size"], q["actorder"]) == ("W4A16", 128, "weight")
    assert (q["calibration_samples"], q["calibration_seq_len"]) == (512, 2048)
    assert not cfg["paths"]["allow_outside"]


def _raw_paths(node) -> list[str]:
    if isinstance(node, dict):
        return [p for v in node.values() for p in _raw_paths(v)]
    if isinstance(node, list):
        return [p for v in node for p in _raw_paths(v)]
    return [node] if isinstance(node, str) and node.startswith("data/raw/") else []


def test_gpu_cluster_dag_builds_with_its_inputs_in_place(tmp_path):
    (tmp_path / "config").symlink_to(REPO / "config")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "samples").symlink_to(REPO / "data" / "samples")
    raw = _raw_paths(yaml.safe_load(GPU_CLUSTER.read_text(encoding="utf-8")))
    assert "data/raw/jawiki-latest-pages-articles.xml.bz2" in raw
    for p in raw:
        (tmp_path / p).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / p).touch()
    proc = snakemake(
        "-n", "-p", "--cores", "1", "--configfile", "config/examples/gpu_cluster.yaml",
        cwd=tmp_path,
    )  # fmt: skip
    out = proc.stdout
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", out, re.M))
    assert jobs["build_base"] == "3" and jobs["embed_corpus"] == "16", jobs
    assert jobs["train_evaluator"] == "2" and jobs["prepare_judge"] == "1", jobs
    # Two nodes: srun starts one torchrun per node.
    assert re.search(
        r"srun --nodes 2 --ntasks-per-node 1 torchrun --nnodes 2 --nproc_per_node 8", out
    )


def test_h100_mfu_model_has_the_parameters_its_comment_states():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = load_config(H100_MFU)
    [candidate] = cfg["base"]["candidates"]
    assert cfg["base"]["choose"] == candidate["name"]
    spec = candidate["build"]
    m = spec["model"]
    config = LlamaConfig(
        vocab_size=spec["tokenizer"]["vocab_size"],
        hidden_size=m["hidden_size"],
        num_hidden_layers=m["num_layers"],
        num_attention_heads=m["num_heads"],
        num_key_value_heads=m["num_heads"],
        intermediate_size=m["intermediate_size"],
        max_position_embeddings=m["max_position_embeddings"],
        tie_word_embeddings=False,  # as domainllm.models.build builds it
    )
    with torch.device("meta"):
        n = sum(p.numel() for p in LlamaForCausalLM(config).parameters())
    assert n >= 100_000_000
    assert f"{n:,}" in H100_MFU.read_text(encoding="utf-8")
    cpt = cfg["cpt"]
    assert cpt["bf16"] and cpt["deepspeed"] == "config/deepspeed/zero2.json"
    assert 1024 <= cpt["seq_len"] <= min(2048, m["max_position_embeddings"])
    assert cpt["peak_flops"] == PEAK_FLOPS["H100"]
    assert cpt["gpus_per_node"] * cpt["nodes"] == 1


def test_h100_mfu_plans_the_cpt_target_on_the_shipped_data(tmp_path):
    workdir = make_workdir(tmp_path)
    # The target first: --configfile takes every following word as a file (the
    # command in the example's header is written this way too).
    proc = snakemake(
        "cpt", "-n", "-p", "--cores", "1", "--configfile", "config/examples/h100_mfu.yaml",
        cwd=workdir,
    )  # fmt: skip
    out = proc.stdout
    header = H100_MFU.read_text(encoding="utf-8")
    assert (
        "snakemake cpt --profile profiles/local --configfile config/examples/h100_mfu.yaml"
        in header
    )
    # The base is named: no scoring or selection before training.
    assert "build_base" in out and "score_base" not in out and "select_base" not in out
    [cmd] = [line for line in out.splitlines() if "-m domainllm.train.cpt" in line]
    cmd = cmd.removeprefix("Shell command: ")
    assert cmd.startswith("torchrun --standalone --nproc_per_node 1 -m domainllm.train.cpt")
    for option in (
        "--output results/mfu/models/mfu-h100/cpt",
        "--deepspeed config/deepspeed/zero2.json",
        "--bf16",
        "--seq-len 1024",
        "--batch-size 48",
        "--peak-flops 989000000000000.0",
    ):
        assert option in cmd, f"{option} missing from {cmd}"
    # Where the header says the MFU lands: the train_cpt output folder.
    assert "results/mfu/models/mfu-h100/cpt/train_metrics.json" in header
