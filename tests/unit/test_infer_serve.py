"""Tests of domainllm.infer.serve without vLLM: the command line, failures, the address file.

Serving for real (vLLM's server on CPU) is tested in tests/contract/ (marker ``server``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from domainllm.errors import PipelineError
from domainllm.infer.serve import (
    VLLM_SERVER_MODULE,
    free_port,
    main,
    serve_model,
    server_command,
    wait_for_address,
)
from tests.unit._tiny_lm import build_model


def test_server_command():
    cmd = server_command(
        "results/models/x/sft-gptq",
        host="0.0.0.0",
        port=8123,
        served_model_name="sft-gptq",
        python="/env/bin/python",
        tensor_parallel_size=2,
        max_model_len=4096,
        dtype="bfloat16",
        gpu_memory_utilization=0.9,
        extra_args=["--enforce-eager"],
    )
    assert cmd[:3] == ["/env/bin/python", "-m", VLLM_SERVER_MODULE]
    flags = dict(zip(cmd[3::2], cmd[4::2], strict=False))
    assert flags["--model"] == "results/models/x/sft-gptq"
    assert flags["--port"] == "8123" and flags["--host"] == "0.0.0.0"
    assert flags["--tensor-parallel-size"] == "2" and flags["--max-model-len"] == "4096"
    assert flags["--served-model-name"] == "sft-gptq" and flags["--dtype"] == "bfloat16"
    assert cmd[-1] == "--enforce-eager" and "--trust-remote-code" not in cmd
    assert "--max-model-len" not in server_command("m", host="h", port=1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_model(tmp_path_factory.mktemp("serve") / "m", hidden=32, intermediate=64)


def test_server_that_dies_at_start_is_a_clear_error(model_dir, tmp_path, monkeypatch):
    """This interpreter has no vLLM: the server exits at once; no address is written."""
    monkeypatch.setenv("DOMAINLLM_SERVE_KEY", "sk-never-on-the-command-line")
    address = tmp_path / "serve" / "sft.json"
    with pytest.raises(PipelineError, match=r"exited with code 1 before it was healthy(.|\n)*vllm"):
        serve_model(
            str(model_dir),
            str(address),
            served_model_name="sft",
            host="127.0.0.1",
            python=sys.executable,
            startup_timeout_s=60,
            api_key_env="DOMAINLLM_SERVE_KEY",
        )
    assert not address.exists()
    log = address.with_suffix(".server.log").read_text()
    assert "No module named 'vllm'" in log and "sk-never" not in log


def test_missing_model_folder_or_weights(model_dir, tmp_path):
    import shutil

    with pytest.raises(PipelineError, match="nowhere: model folder does not exist"):
        serve_model(str(tmp_path / "nowhere"), str(tmp_path / "a.json"), served_model_name="x")
    bare = tmp_path / "bare"
    shutil.copytree(model_dir, bare)
    (bare / "model.safetensors").unlink()
    with pytest.raises(PipelineError, match="bare: no model weights"):
        serve_model(str(bare), str(tmp_path / "a.json"), served_model_name="x")
    assert not (tmp_path / "a.json").exists()


def test_wait_for_address(tmp_path):
    address = tmp_path / "sft.json"
    info = {"url": "http://node1:8000/v1", "served_model_name": "sft", "stops_at": "later"}

    def write_later():
        time.sleep(0.5)
        address.write_text(json.dumps(info))

    threading.Thread(target=write_later).start()
    assert wait_for_address(str(address), timeout_s=30) == info
    # The workflow (here: a process that has ended) died before writing it.
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    with pytest.raises(PipelineError, match="not written, and the workflow .* has ended"):
        wait_for_address(str(tmp_path / "other.json"), pid=ended.pid)
    with pytest.raises(PipelineError, match="not written within 0.1 s"):
        wait_for_address(str(tmp_path / "other.json"), timeout_s=0.1)


def test_make_serve_prints_the_address(tmp_path, capsys):
    address = tmp_path / "sft-gptq.json"
    address.write_text(
        json.dumps(
            {
                "url": "http://gpu-node7:41234/v1",
                "served_model_name": "sft-gptq",
                "stops_at": "2026-01-01T04:00:00+00:00",
            }
        )
    )
    assert main(["wait", str(address)]) == 0
    out = capsys.readouterr().out
    assert "serving sft-gptq at http://gpu-node7:41234/v1 until 2026-01-01T04:00:00" in out
    assert "generate.openai.base_url=http://gpu-node7:41234/v1" in out


def test_free_port_is_free():
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # would raise if taken
