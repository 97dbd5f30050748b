"""Snakemake adapter: serve one model version with vLLM's OpenAI server, write its address."""

from domainllm.infer.serve import serve_model
from domainllm.logs import log_to

p = snakemake.params  # noqa: F821
with log_to(snakemake.log[0]):  # noqa: F821
    serve_model(
        snakemake.input.model,  # noqa: F821
        snakemake.output[0],  # noqa: F821
        served_model_name=p.served_model_name,
        host=p.host,
        port=p.port,
        minutes=p.minutes,
        startup_timeout_s=p.startup_timeout_s,
        extra_args=list(p.extra_args),
        tensor_parallel_size=p.tensor_parallel_size,
        max_model_len=p.max_model_len,
        dtype=p.dtype,
        gpu_memory_utilization=p.gpu_memory_utilization,
        api_key_env=p.api_key_env,
        trust_remote_code=p.trust_remote_code,
        python=p.python,
        server_log=snakemake.log[0].replace(".log", ".server.log"),  # noqa: F821
    )
