# Generation: every model version answers the held-out ELYZA prompts with the same
# backend and decoding settings (greedy by default), one job per version; and a
# vLLM OpenAI-compatible server for one version (serve_model, `make serve`).

GENERATE = config["generate"]
GENERATE_BACKEND = GENERATE["backend"]
# The backend's own config block (generate.vllm, generate.openai); transformers has none.
GENERATE_OPTIONS = GENERATE.get(GENERATE_BACKEND, {})
TENSOR_PARALLEL = GENERATE["vllm"]["tensor_parallel_size"]
# GPUs a generate job holds: none to call a server, tensor_parallel_size for vLLM.
GENERATE_GPUS = {"openai": 0, "vllm": TENSOR_PARALLEL}.get(GENERATE_BACKEND, 1)


rule generate:
    input:
        model=version_model_dir,
        prompts=EVAL_PROMPTS,
        # The chosen base: trust_remote_code is its setting (see quantize_gptq).
        origin=chosen_base_dir,
    output:
        f"{R}/generations/{{version}}.parquet",
    params:
        backend=GENERATE_BACKEND,
        backend_options=GENERATE_OPTIONS,
        max_new_tokens=GENERATE["max_new_tokens"],
        temperature=GENERATE["temperature"],
        top_p=GENERATE["top_p"],
        batch_size=GENERATE["batch_size"],
        overflow=GENERATE["overflow"],
        seed=config["seed"],
        trust_remote_code=chosen_base_setting("trust_remote_code", False),
    threads: 1
    resources:
        gpu=GENERATE_GPUS,
        mem_mb=mem_mb(4000),
        runtime=60,
    log:
        f"{L}/generate/{{version}}.log",
    conda:
        "../envs/serve.yaml"
    script:
        "../scripts/generate.py"


# Serves one version until generate.serve.minutes have passed; the address file
# appears once the server answers /health. Always rerun it: `make serve VERSION=...`
# passes --forcerun serve_model and prints the address.
rule serve_model:
    input:
        model=version_model_dir,
        origin=chosen_base_dir,
    output:
        f"{R}/serve/{{version}}.json",
    params:
        served_model_name="{version}",
        host=GENERATE["serve"]["host"],
        port=GENERATE["serve"]["port"],
        minutes=GENERATE["serve"]["minutes"],
        startup_timeout_s=GENERATE["serve"]["startup_timeout_s"],
        extra_args=GENERATE["serve"]["extra_args"],
        python=GENERATE["serve"]["python"],
        tensor_parallel_size=TENSOR_PARALLEL,
        max_model_len=GENERATE["vllm"]["max_model_len"],
        dtype=GENERATE["vllm"]["dtype"],
        gpu_memory_utilization=GENERATE["vllm"]["gpu_memory_utilization"],
        api_key_env=GENERATE["openai"]["api_key_env"],
        trust_remote_code=chosen_base_setting("trust_remote_code", False),
    threads: 4
    resources:
        gpu=TENSOR_PARALLEL,
        mem_mb=mem_mb(32000),
        runtime=int(GENERATE["serve"]["minutes"]) + 15,
    log:
        f"{L}/serve_model/{{version}}.log",
    conda:
        "../envs/serve.yaml"
    script:
        "../scripts/serve_model.py"
