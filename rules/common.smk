# Paths, candidate lists and input functions shared by every rule file.
# Paths are built once here from config["paths"]; rule files never retype them.

import json
import os
import re

from domainllm.evaluate.feedback import check_evaluator_specs
from domainllm.models.loading import looks_local
from domainllm.models.metrics import check_weights, selection_metrics
from domainllm.models.tasks import load_tasks

R = config["paths"]["results"]
L = config["paths"]["logs"]
# Every atomic write under R records its sha256 in R/.checksums/ (domainllm verify).
os.makedirs(f"{R}/.checksums", exist_ok=True)
MODEL = config["model_name"]
CANDIDATES = [c["name"] for c in config["base"]["candidates"]]
CANDIDATE_SPECS = {c["name"]: c for c in config["base"]["candidates"]}
VERSIONS = config["evaluate"]["versions"]

CORPUS_DOCS = f"{R}/corpus/docs.parquet"
CORPUS_CLEAN = f"{R}/corpus/clean.parquet"
CORPUS_STATS = f"{R}/corpus/stats.json"
CORPUS_DROPPED_SAMPLES = f"{R}/corpus/dropped_samples.jsonl"
CORPUS_SELECTED = f"{R}/corpus/selected.parquet"
CORPUS_SELECTION = f"{R}/corpus/selection.json"
CORPUS_SELECTION_HIST = f"{R}/corpus/selection_hist.png"
CORPUS_SELECTION_REPORT = f"{R}/corpus/selection_report.md"
CORPUS_EMBED_CHECK = f"{R}/corpus/embedding_check.json"
EMBEDDER_STATE = f"{R}/corpus/embedder.npz"
SEED_EMBEDDINGS = f"{R}/corpus/embeddings/seeds.npy"
# The cleaned corpus in config corpus.parts.n parts ("000-of-002", ...), one embed job each.
N_PARTS = config["corpus"]["parts"]["n"]
CORPUS_PARTS = [f"{i:03d}-of-{N_PARTS:03d}" for i in range(N_PARTS)]
# Only the sentence-transformers backend runs a neural model (GPU where there is one).
EMBED_GPU = 1 if config["corpus"]["select"]["backend"] == "sentence-transformers" else 0
CHECK_GPU = 1 if "sentence-transformers" in config["corpus"]["select"]["check"]["backends"] else 0
DOMAIN_SEED = f"{R}/data/domain_seed.parquet"
DOMAIN_HELDOUT = f"{R}/data/domain_heldout.parquet"
SFT_CANDIDATES = f"{R}/data/sft_candidates.parquet"
SFT_DATA = f"{R}/data/sft.parquet"
EVAL_PROMPTS = f"{R}/data/eval_prompts.parquet"
FEEDBACK_TRAIN = f"{R}/data/feedback_train.parquet"
FEEDBACK_TEST = f"{R}/data/feedback_test.parquet"
# Evaluators trained on feedback labels (evaluate.evaluators), checked now; the first
# one filters the SFT candidates.
EVALUATORS = {e["name"]: e for e in check_evaluator_specs(config["evaluate"]["evaluators"])}
EVALUATOR_DIR = f"{R}/evaluators/{next(iter(EVALUATORS))}"
# train_evaluator's wildcard: exactly these names (names may hold "."; judge is not one).
TRAINED_EVALUATOR_NAMES = "|".join(n.replace(".", r"\.") for n in EVALUATORS)
SELECTION_TABLE = f"{R}/selection/table.parquet"
CHOSEN = f"{R}/selection/chosen.json"
EVAL_TABLE = f"{R}/eval/table.parquet"
EVAL_PLOTS = f"{R}/eval/plots"
VALIDATION_MD = f"{R}/eval/evaluator_validation.md"
VALIDATION_JSON = f"{R}/eval/evaluator_validation.json"
VALIDATION_METRICS = f"{R}/eval/evaluator_fitness.json"
# The LLM judge (evaluate.judge): an evaluator folder like the trained ones.
JUDGE = config["evaluate"]["judge"]
JUDGE_DIR = f"{R}/evaluators/judge"
JUDGE_GPU = 1 if JUDGE["enabled"] and JUDGE["backend"] == "transformers" else 0
# Model versions: the stages, and every base candidate as base-<candidate>
# (evaluate.base_candidates adds the ones not chosen to the table).
STAGE_VERSIONS = ["base", "cpt", "sft", "sft-gptq"]
CANDIDATE_VERSIONS = {f"base-{c}": c for c in CANDIDATES}
# The quality table of the quantised model: full precision vs GPTQ vs round-to-nearest.
QUANT_QUALITY = f"{R}/quantize/{MODEL}/quality.json"
QUANT_QUALITY_MD = f"{R}/quantize/{MODEL}/quality.md"
QUALITY_GPU = 0 if config["quantize"]["quality"]["device"] == "cpu" else 1

if config["base"]["choose"] != "auto" and config["base"]["choose"] not in CANDIDATES:
    raise ValueError(
        f"config key 'base.choose': '{config['base']['choose']}' is not 'auto' or a candidate "
        f"name ({', '.join(CANDIDATES)})"
    )

# Multiple-choice task files of base selection, checked now (with the weights on
# their metrics) so a bad task file fails before any job runs.
SELECTION_TASKS = load_tasks(config["base"]["selection"]["tasks"])
TASK_FILES = [t.file for t in SELECTION_TASKS]
TASK_DATA = [t.path for t in SELECTION_TASKS]
check_weights(config["base"]["selection"]["weights"], selection_metrics(SELECTION_TASKS))


wildcard_constraints:
    candidate="|".join(CANDIDATES),
    version="|".join(re.escape(v) for v in STAGE_VERSIONS + list(CANDIDATE_VERSIONS)),
    evaluator="[A-Za-z0-9._-]+",
    tokenizer="[A-Za-z0-9._-]+",
    part="[0-9]+-of-[0-9]+",


def chosen_base(wildcards=None):
    """Name of the base model that feeds training: the override, or the ranking's winner."""
    if config["base"]["choose"] != "auto":
        return config["base"]["choose"]
    with open(checkpoints.select_base.get().output.chosen) as f:
        return json.load(f)["name"]


def base_dir(name):
    return f"{R}/base/{name}"


def chosen_base_dir(wildcards=None):
    return base_dir(chosen_base())


def chosen_shards(wildcards=None):
    """Folder of the shards tokenised with the chosen base's tokenizer."""
    return f"{R}/shards/{chosen_base()}"


def model_dir(version):
    """Folder of a model version: the chosen base, a base candidate (base-<candidate>),
    or results/models/<name>/<version>."""
    if version == "base":
        return chosen_base_dir()
    if version in CANDIDATE_VERSIONS:
        return base_dir(CANDIDATE_VERSIONS[version])
    return f"{R}/models/{MODEL}/{version}"


def version_model_dir(wildcards):
    return model_dir(wildcards.version)


def checkpoint_dir(stage):
    """Where training checkpoints live: outside declared outputs, so a failed job keeps them."""
    return f"{R}/checkpoints/{MODEL}/{stage}"


def source_paths(wildcards=None):
    return [s["path"] for s in config["corpus"]["sources"]]


def base_build_input(wildcards):
    """Inputs of build_base: the cleaned corpus for a candidate built from scratch, the
    folder for one copied from a local path; a hub id is no input (nothing is fetched
    before the job runs)."""
    spec = CANDIDATE_SPECS[wildcards.candidate]
    if spec.get("build"):
        return {"corpus": CORPUS_CLEAN}
    if looks_local(spec["source"]):
        return {"source": spec["source"]}
    return {}


def candidate_setting(key, default=None):
    """A params function returning one setting of the candidate named by the wildcard."""

    def get(wildcards):
        return CANDIDATE_SPECS[wildcards.candidate].get(key, default)

    return get


def tokenizer_base_dir(wildcards):
    """The base folder whose tokenizer writes results/shards/<tokenizer>/."""
    return base_dir(wildcards.tokenizer)


def instruction_inputs(wildcards=None):
    """Inputs of prepare_instructions: ELYZA-tasks-100 and the configured instruction sources."""
    ins = config["data"]["instructions"]
    inputs = {"elyza": ins["elyza"], "sources": [s["path"] for s in ins["sources"]]}
    if config["data"]["jsquad"]["path"]:
        # JSQuAD questions join the evaluation prompts (data.jsquad).
        inputs["jsquad"] = config["data"]["jsquad"]["path"]
    return inputs


def train_evaluator_inputs(wildcards):
    """Inputs of train_evaluator: the feedback splits and the evaluators it stacks."""
    stack = EVALUATORS[wildcards.evaluator].get("stack", [])
    return {
        "train": FEEDBACK_TRAIN,
        "test": FEEDBACK_TEST,
        "stack": [f"{R}/evaluators/{name}" for name in stack],
    }


def evaluator_options(wildcards):
    """The configured options of one trained evaluator (its entry less name, type, stack)."""
    spec = EVALUATORS[wildcards.evaluator]
    return {k: v for k, v in spec.items() if k not in ("name", "type", "stack")}


def evaluator_type(wildcards):
    return EVALUATORS[wildcards.evaluator]["type"]


def evaluator_threads(wildcards):
    """Fine-tuning takes both cores of the default machine; LightGBM one (fixed, so its
    models do not depend on the machine)."""
    return 2 if EVALUATORS[wildcards.evaluator]["type"] == "bert" else 1


def trained_evaluator_gpu(wildcards):
    """Fine-tuning takes a GPU where there is one."""
    return 1 if EVALUATORS[wildcards.evaluator]["type"] == "bert" else 0


def mem_mb(mb):
    """A job's memory: ``mb`` on the first attempt, twice that on the second, ...

    Snakemake retries a failed job (``retries`` in profiles/slurm) with ``attempt``
    raised; a job killed for memory then asks SLURM for more.
    """

    def per_attempt(wildcards, attempt):
        return mb * attempt

    return per_attempt


def evaluator_mem_mb(wildcards, attempt):
    return (6000 if EVALUATORS[wildcards.evaluator]["type"] == "bert" else 4000) * attempt


def evaluator_runtime(wildcards):
    return 120 if EVALUATORS[wildcards.evaluator]["type"] == "bert" else 20


def sft_chat_template(wildcards=None):
    """The chat template file of train_sft (sft.chat_template), or none."""
    path = config["sft"]["chat_template"]
    return [path] if path else []


def chosen_base_setting(key, default=None):
    """A params function returning one setting of the base a rule's model comes from: the
    candidate of a base-<candidate> version, else the chosen base (training stages)."""

    def get(wildcards):
        name = CANDIDATE_VERSIONS.get(wildcards.get("version")) or chosen_base()
        return CANDIDATE_SPECS[name].get(key, default)

    return get


def launch_options(options, *base_settings):
    """A params function: a training stage's ``options`` and the chosen base's boolean
    ``base_settings`` (trust_remote_code, allow_pickle) as its entry point's flags."""

    def get(wildcards):
        from domainllm.train.common import cli_flags

        spec = CANDIDATE_SPECS[chosen_base()]
        return cli_flags({**options, **{k: spec.get(k, False) for k in base_settings}})

    return get


def part_embeddings(wildcards=None):
    """The cached embeddings of every corpus part, in part order (select_domain's input)."""
    return [f"{R}/corpus/embeddings/{p}.npy" for p in CORPUS_PARTS]


def part_ids(wildcards=None):
    """The id tables of every corpus part, in part order."""
    return [f"{R}/corpus/embeddings/{p}.ids.parquet" for p in CORPUS_PARTS]


# ---------------------------------------------------------------- evaluation


def trained_evaluators():
    """Name -> folder of every evaluator the config trains on feedback labels."""
    return {name: f"{R}/evaluators/{name}" for name in EVALUATORS}


def evaluator_dirs():
    """Name -> folder of every evaluator: the trained ones, and the judge when enabled."""
    dirs = trained_evaluators()
    if JUDGE["enabled"]:
        dirs["judge"] = JUDGE_DIR
    return dirs


def table_versions(wildcards=None):
    """Rows of the evaluation table: evaluate.versions, then (evaluate.base_candidates)
    every base candidate that was not chosen, as base-<candidate>."""
    extra = []
    if config["evaluate"]["base_candidates"]:
        extra = [v for v, c in CANDIDATE_VERSIONS.items() if c != chosen_base()]
    return VERSIONS + extra


def version_records(wildcards=None):
    return [f"{R}/eval/versions/{v}.json" for v in table_versions()]


def version_item_scores(wildcards=None):
    return [f"{R}/eval/versions/{v}.items.parquet" for v in table_versions()]


def version_generations(wildcards=None):
    return [f"{R}/generations/{v}.parquet" for v in table_versions()]


def score_files(wildcards=None):
    """What evaluate.scores asks for: R/eval/scores/<evaluator>/<version>.parquet."""
    rows = table_versions()
    files = []
    for name, versions in config["evaluate"]["scores"].items():
        for v in rows if versions == "all" else [v for v in versions if v in rows]:
            files.append(f"{R}/eval/scores/{name}/{v}.parquet")
    return files


def evaluator_folder(wildcards):
    return evaluator_dirs()[wildcards.evaluator]


def evaluator_gpu(wildcards):
    """A job scoring with the local judge model takes a GPU where there is one."""
    return JUDGE_GPU if wildcards.evaluator == "judge" else 0


def judge_is_version():
    return JUDGE["model"] in STAGE_VERSIONS or JUDGE["model"] in CANDIDATE_VERSIONS


def judge_model(wildcards=None):
    """The judge model: a version's folder, a model folder, or the name a server knows."""
    return model_dir(JUDGE["model"]) if judge_is_version() else JUDGE["model"]


def judge_model_input(wildcards=None):
    """The judge model folder as an input (a version, or an existing local folder)."""
    if judge_is_version() or looks_local(JUDGE["model"]):
        return [judge_model()]
    return []


def judge_origin(wildcards=None):
    """The base a version judge comes from (its trust_remote_code setting; see quantize_gptq)."""
    if not judge_is_version():
        return []
    name = CANDIDATE_VERSIONS.get(JUDGE["model"])
    return [base_dir(name) if name else chosen_base_dir()]


def judge_trust_remote_code(wildcards=None):
    """A version judge inherits its base's trust_remote_code; other models never get it."""
    if not judge_is_version():
        return False
    name = CANDIDATE_VERSIONS.get(JUDGE["model"]) or chosen_base()
    return CANDIDATE_SPECS[name].get("trust_remote_code", False)


def _check_scores():
    """evaluate.scores names known evaluators and versions (checked before any job runs)."""
    known = evaluator_dirs()
    versions = VERSIONS + list(CANDIDATE_VERSIONS)
    for name, listed in config["evaluate"]["scores"].items():
        if name not in known:
            why = " (evaluate.judge.enabled is false)" if name == "judge" else ""
            raise ValueError(
                f"config key 'evaluate.scores.{name}': no evaluator '{name}'{why} "
                f"(known: {', '.join(known)})"
            )
        for v in [] if listed == "all" else listed:
            if v not in versions:
                raise ValueError(
                    f"config key 'evaluate.scores.{name}': '{v}' is not a version of the table "
                    f"({', '.join(versions)})"
                )


_check_scores()
