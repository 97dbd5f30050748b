"""train_cpt under a launcher: the command the workflow plans, and that it parses back."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from domainllm.errors import ConfigError
from domainllm.train.common import cli_flags, launch_command
from tests.conftest import REPO, make_workdir, snakemake
from tests.unit._tiny_lm import sample_texts, write_shards


def test_launch_command_per_launcher():
    module = "domainllm.train.cpt"
    assert launch_command(module, "none") == f"python -m {module}"
    assert launch_command(module, "torchrun", nproc_per_node=8) == (
        f"torchrun --standalone --nproc_per_node 8 -m {module}"
    )
    assert launch_command(module, "deepspeed", nproc_per_node=4, port=29600) == (
        f"deepspeed --num_gpus 4 --master_port 29600 --module {module}"
    )
    multi = launch_command(module, "torchrun", nproc_per_node=8, nodes=4, port=29400)
    assert multi.startswith("srun --nodes 4 --ntasks-per-node 1 torchrun --nnodes 4 ")
    assert "--nproc_per_node 8 --rdzv_id $SLURM_JOB_ID --rdzv_backend c10d" in multi
    assert multi.endswith(f":29400 -m {module}")
    assert '--rdzv_endpoint $(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)' in multi
    with pytest.raises(ConfigError, match="use torchrun for several nodes"):
        launch_command(module, "deepspeed", nproc_per_node=8, nodes=2)
    with pytest.raises(ConfigError, match="runs one process"):
        launch_command(module, "none", nproc_per_node=2)
    with pytest.raises(ConfigError, match="'mpirun' is not one of"):
        launch_command(module, "mpirun")


def parse_entry_point(monkeypatch, argv: list[str]) -> tuple[tuple, dict]:
    """What ``python -m domainllm.train.cpt <argv>`` would call train_cpt with."""
    from domainllm.train import cpt

    calls = []
    monkeypatch.setattr(cpt, "train_cpt", lambda *a, **kw: calls.append((a, kw)))
    assert cpt.main(argv) == 0
    return calls[0]


def test_cli_flags_parse_back_to_the_same_keyword_arguments(monkeypatch):
    options = {
        "max_steps": 300, "batch_size": 16, "gradient_accumulation_steps": 4, "seq_len": 2048,
        "learning_rate": 3e-4, "warmup_ratio": 0.02, "save_steps": 100,
        "deepspeed": "config/deepspeed/zero 3.json", "bf16": True, "peak_flops": 9.89e14,
        "seed": 11, "trust_remote_code": False, "allow_pickle": True,
    }  # fmt: skip
    flags = cli_flags(options)
    assert "--trust-remote-code" not in flags and "'config/deepspeed/zero 3.json'" in flags
    paths = ["--base", "b", "--shards", "s", "--output", "o", "--checkpoint-dir", "c"]
    args, kwargs = parse_entry_point(monkeypatch, paths + shlex.split(flags))
    assert args == ("b", "s", "o")
    assert kwargs == {
        **options, "checkpoint_dir": "c", "threads": None, "logging_steps": 5,
    }  # fmt: skip


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return make_workdir(tmp_path_factory.mktemp("launch"))


def launch_config(workdir, name: str, **cpt) -> str:
    """config/test.yaml with the base chosen (a concrete DAG) and ``cpt`` settings."""
    config = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    config["base"]["choose"] = config["base"]["candidates"][0]["name"]
    config["cpt"].update(cpt)
    (workdir / name).write_text(yaml.safe_dump(config, allow_unicode=True))
    return name


def planned_train_cpt(workdir, configfile: str) -> tuple[str, str]:
    """The dry run's train_cpt job: (its block, its shell command)."""
    out = snakemake("cpt", "-n", "-p", "--cores", "1", "--configfile", configfile, cwd=workdir)
    block = re.search(r"rule train_cpt:\n(.*?)\n\n", out.stdout, re.S)
    assert block, out.stdout
    command = re.search(r"Shell command: (.*)", block.group(1))
    assert command, block.group(1)
    return block.group(1), command.group(1)


def test_dry_run_plans_the_launcher_and_the_module(workdir, monkeypatch):
    config = launch_config(
        workdir, "torchrun.yaml", launcher="torchrun", gpus_per_node=2, bf16=True,
        deepspeed="config/deepspeed/zero3.json",
    )  # fmt: skip
    block, command = planned_train_cpt(workdir, config)
    prefix = "torchrun --standalone --nproc_per_node 2 -m domainllm.train.cpt "
    assert command.startswith(prefix), command
    assert command.endswith(" > logs/train_cpt.log 2>&1"), command
    assert re.search(r"resources: .*\bnodes=1\b.*\bmem_mb=64000\b", block), block
    # The planned options are the config's, as the entry point reads them.
    test = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    argv = shlex.split(command[len(prefix) :].split(" > ")[0])
    args, kwargs = parse_entry_point(monkeypatch, argv)
    assert args[0].startswith("results/base/") and args[2].endswith("/cpt")
    assert kwargs["checkpoint_dir"].startswith("results/checkpoints/")
    for key in ("max_steps", "batch_size", "seq_len", "learning_rate", "save_steps"):
        assert kwargs[key] == test["cpt"][key], key
    assert kwargs["deepspeed"] == "config/deepspeed/zero3.json" and kwargs["bf16"] is True
    assert kwargs["seed"] == test["seed"] and kwargs["trust_remote_code"] is False

    lint = snakemake("--lint", "--configfile", config, cwd=workdir, check=False)
    assert lint.returncode == 0 and "Lints for" not in lint.stdout + lint.stderr, lint.stdout


def test_dry_run_plans_a_multi_node_torchrun_and_the_deepspeed_launcher(workdir):
    multi = launch_config(workdir, "multi.yaml", launcher="torchrun", gpus_per_node=8, nodes=2)
    block, command = planned_train_cpt(workdir, multi)
    assert command.startswith("srun --nodes 2 --ntasks-per-node 1 torchrun --nnodes 2 ")
    assert "--rdzv_backend c10d" in command and " -m domainllm.train.cpt " in command
    # The SLURM executor lets the job's own srun place the processes (an mpi job).
    assert re.search(r"resources: .*\bnodes=2\b.*\bmpi=srun, tasks=2, tasks_per_gpu=0\b", block)

    ds = launch_config(workdir, "ds.yaml", launcher="deepspeed", gpus_per_node=4)
    _, command = planned_train_cpt(workdir, ds)
    assert command.startswith("deepspeed --num_gpus 4 --master_port 29500 --module ")
    assert "--module domainllm.train.cpt --base results/base/" in command


def test_the_default_config_keeps_the_one_process_script(workdir):
    config = launch_config(workdir, "default.yaml")
    block, command = planned_train_cpt(workdir, config)
    assert command == "None"  # scripts/train_cpt.py, one process: no shell command
    assert re.search(r"resources: .*\bgpu=1, nodes=1, runtime=240, mem_mb=8000\b", block), block


@pytest.mark.slow
def test_the_launcher_rule_trains_with_two_cpu_processes(tmp_path, pytestconfig):
    """The planned torchrun command, run by Snakemake: ZeRO-2 over two CPU processes."""
    from tests.unit.test_train_cpt import build_base
    from tests.unit.test_train_cpt_distributed import torch_extensions_dir

    workdir = make_workdir(tmp_path)
    texts = sample_texts(60)
    base = build_base(workdir / "results" / "base" / "tiny-ja", texts)
    write_shards(base, workdir / "results" / "shards" / "tiny-ja", texts)
    config = launch_config(
        workdir, "run.yaml", launcher="torchrun", gpus_per_node=2, max_steps=4, save_steps=2,
        deepspeed="config/deepspeed/zero2.json",
    )  # fmt: skip
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "TORCH_EXTENSIONS_DIR": torch_extensions_dir(pytestconfig),
    }
    # Only train_cpt: the base and shards above stand in for the upstream rules.
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "cpt",
         "--cores", "2", "--allowed-rules", "train_cpt", "cpt", "--configfile", config],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    log = workdir / "logs" / "train_cpt.log"
    assert proc.returncode == 0, proc.stderr[-3000:] + (
        log.read_text()[-3000:] if log.exists() else ""
    )
    out = workdir / "results" / "models" / "tiny-test" / "cpt"
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["world_size"] == 2
    step = (
        workdir / "results" / "checkpoints" / "tiny-test" / "cpt" / "checkpoint-4" / "global_step4"
    )
    assert {f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)} <= {
        p.name for p in step.iterdir()
    }
    assert "CPT of tiny-ja done: 4 steps" in log.read_text()
