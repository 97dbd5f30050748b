"""Times domainllm's ``vllm`` backend (vLLM's offline ``LLM`` engine) for bench_generate.py.

Runs under an interpreter that has vLLM (``.venv-vllm-cpu`` on CPU) with
``PYTHONPATH=src``: vLLM pins its own torch and transformers, which must not meet the
main environment's. argv[1] is a JSON file ``{"model", "prompts", "params", "kwargs"}``;
the timing (bench_generate's ``timed``, which this directory's import path reaches)
is written as JSON to argv[2].
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main() -> int:
    spec = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    from bench_generate import timed

    from domainllm.infer import SamplingParams, get_backend

    params = dict(spec["params"])
    params["logit_bias"] = {int(k): v for k, v in (params.get("logit_bias") or {}).items()}
    sampling = SamplingParams(**params)
    batch = spec["prompts"]
    start = time.perf_counter()
    with get_backend("vllm", model=spec["model"], **spec["kwargs"]) as backend:
        startup = time.perf_counter() - start
        backend.generate(batch[:8], sampling)  # warm-up
        result = {**timed(backend, batch, sampling), "startup_s": round(startup, 1)}
    Path(sys.argv[2]).write_text(json.dumps(result) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
