"""Safe defaults, each shown by behaviour and guarded over the whole source tree.

- custom model code runs only when a model entry sets ``trust_remote_code``;
- weights load from safetensors only unless a model entry sets ``allow_pickle``;
- an API key comes only from the environment and ends up in no log, config or artifact
  (a real workflow job against a local OpenAI-compatible stub, every file grepped);
- every HTTP call has a timeout: a server that never answers cannot hang a job;
- XML dumps are parsed without DTDs or entities: nothing is expanded or fetched;
- config paths stay inside the working directory unless ``paths.allow_outside`` is set.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import re
import socket
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

import polars as pl
import pytest
import yaml

from domainllm.config import load_config, validate_config
from domainllm.errors import ConfigError, DataError, PipelineError
from tests.conftest import REPO, make_workdir, snakemake
from tests.unit._tiny_lm import build_model, write_eval_prompts

SRC = REPO / "src" / "domainllm"
TEST_CONFIG = yaml.safe_load((REPO / "config" / "test.yaml").read_text(encoding="utf-8"))


def source_calls():
    """``(file, call node)`` of every call in the package's source."""
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                yield path.relative_to(REPO), node


def call_name(node: ast.Call) -> str:
    """``a.b.c`` of a call's function, as far as it is a plain dotted name."""
    parts = []
    f = node.func
    while isinstance(f, ast.Attribute):
        parts.append(f.attr)
        f = f.value
    if isinstance(f, ast.Name):
        parts.append(f.id)
    return ".".join(reversed(parts))


def keywords(node: ast.Call) -> dict[str, ast.expr]:
    return {k.arg: k.value for k in node.keywords if k.arg}


# --------------------------------------------------------------------------- remote code

CUSTOM_CODE = """
import os
from pathlib import Path

Path(os.environ["DOMAINLLM_CUSTOM_CODE_MARK"]).write_text("custom model code ran")

from transformers import LlamaConfig, LlamaForCausalLM


class CustomConfig(LlamaConfig):
    model_type = "domainllm_custom"


class CustomModel(LlamaForCausalLM):
    config_class = CustomConfig
"""


@pytest.fixture
def custom_code_model(tmp_path, monkeypatch):
    """A model folder whose config points at modelling code shipped in the folder; the
    code leaves a mark on disk when it is imported."""
    folder = build_model(tmp_path / "custom", vocab_size=300, hidden=16, heads=2)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = "domainllm_custom"
    cfg["auto_map"] = {
        "AutoConfig": "custom_model.CustomConfig",
        "AutoModelForCausalLM": "custom_model.CustomModel",
    }
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "custom_model.py").write_text(CUSTOM_CODE)
    mark = tmp_path / "ran"
    monkeypatch.setenv("DOMAINLLM_CUSTOM_CODE_MARK", str(mark))
    return folder, mark


def test_custom_model_code_runs_only_when_turned_on(custom_code_model):
    from domainllm.models.loading import load_causal_lm

    folder, mark = custom_code_model
    with pytest.raises((ValueError, PipelineError), match="trust_remote_code"):
        load_causal_lm(folder)
    assert not mark.exists(), "custom code ran without trust_remote_code"
    model, _ = load_causal_lm(folder, trust_remote_code=True)
    assert mark.read_text() == "custom model code ran"
    assert type(model).__name__ == "CustomModel"


def test_trust_remote_code_is_off_unless_a_model_entry_sets_it():
    cfg = load_config(REPO / "config" / "config.yaml")
    assert all(c["trust_remote_code"] is False for c in cfg["base"]["candidates"])
    # Nowhere in the package is it switched on, and every parameter defaults to off.
    for path, node in source_calls():
        value = keywords(node).get("trust_remote_code")
        assert not (isinstance(value, ast.Constant) and value.value is True), (
            f"{path}:{node.lineno}"
        )
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                args = node.args.args + node.args.kwonlyargs
                defaults = [None] * (len(node.args.args) - len(node.args.defaults))
                defaults += node.args.defaults + node.args.kw_defaults
                for arg, default in zip(args, defaults, strict=True):
                    if arg.arg in ("trust_remote_code", "allow_pickle") and default is not None:
                        assert isinstance(default, ast.Constant) and default.value is False, (
                            f"{path}:{node.lineno} {node.name}({arg.arg}=...)"
                        )
    # The rules hand jobs only the model entries' own settings.
    for rule_file in (REPO / "rules").glob("*.smk"):
        for line in rule_file.read_text().splitlines():
            if re.match(r"\s*(trust_remote_code|allow_pickle)\s*=", line):
                assert re.search(r"=(chosen_base_setting|candidate_setting|judge_trust)", line), (
                    f"{rule_file.name}: {line.strip()}"
                )


# --------------------------------------------------------------------------- pickle


def test_pickled_weights_load_only_when_allowed(tmp_path):
    import torch

    from domainllm.models.loading import load_causal_lm

    folder = build_model(tmp_path / "m", vocab_size=300, hidden=16, heads=2)
    model, _ = load_causal_lm(folder)
    (folder / "model.safetensors").unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(DataError, match="pickled .bin weights.*allow_pickle: true"):
        load_causal_lm(folder)
    loaded, _ = load_causal_lm(folder, allow_pickle=True)
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)


def test_every_weight_loader_requires_safetensors():
    """Model weights load through ``load_causal_lm`` (safetensors unless allow_pickle) or
    pass ``use_safetensors=True``; nothing calls torch.load or unpickles arrays."""
    loaders = 0
    for path, node in source_calls():
        name = call_name(node)
        kw = keywords(node)
        where = f"{path}:{node.lineno} {name}"
        if re.fullmatch(r"\w*(AutoModel\w*|For\w+)\.from_pretrained", name):
            loaders += 1
            assert "use_safetensors" in kw, where
            value = kw["use_safetensors"]
            if str(path).endswith("models/loading.py"):
                continue  # None only when the model entry sets allow_pickle
            assert isinstance(value, ast.Constant) and value.value is True, where
        elif name.endswith("SentenceTransformer"):
            loaders += 1
            assert "use_safetensors" in ast.unparse(kw.get("model_kwargs", ast.Constant(""))), where
        elif name in ("torch.load", "pickle.load", "pickle.loads", "joblib.load"):
            raise AssertionError(f"{where}: unpickles")
        elif name in ("np.load", "numpy.load"):
            assert ast.unparse(kw.get("allow_pickle", ast.Constant(False))) == "False", where
    assert loaders >= 4


# --------------------------------------------------------------------------- API keys

MARKER = "sk-domainllm-MARKER-5f0c2a9e41d7"


def grep_tree(root: Path, needle: bytes) -> list[str]:
    """Files under ``root`` (not following links) whose bytes contain ``needle``."""
    hits = []
    for here, _, files in os.walk(root, followlinks=False):
        for name in files:
            p = Path(here) / name
            if p.is_symlink():
                continue
            if needle in p.read_bytes():
                hits.append(str(p.relative_to(root)))
    return hits


@pytest.fixture
def openai_stub():
    from tests.unit.test_infer_openai import Stub, make_handler

    state = Stub()
    state.models = [{"id": "tiny", "object": "model", "max_model_len": 256}]
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield state
    server.shutdown()
    server.server_close()


def test_api_key_reaches_the_server_and_no_file(tmp_path, openai_stub, monkeypatch):
    """Rule generate with the openai backend, key in an environment variable: the server
    gets it, and no log, config, Snakemake record or artifact holds it, after a
    successful job and after a failing one."""
    (tmp_path / "work").mkdir()
    work = make_workdir(tmp_path / "work")
    cfg = copy.deepcopy(TEST_CONFIG)
    base = cfg["base"]["candidates"][0]["name"]
    cfg["base"]["choose"] = base  # no selection checkpoint to run
    cfg["generate"]["backend"] = "openai"
    cfg["generate"]["openai"] = {
        "base_url": openai_stub.url,
        "model": "tiny",
        "api_key_env": "DOMAINLLM_SAFE_DEFAULTS_KEY",
        "timeout_s": 10,
        "max_retries": 1,
        "backoff_s": 0.01,
    }
    (work / "gen.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True))
    models = work / "results" / "models" / cfg["model_name"]
    for folder in (models / "sft", models / "cpt", work / "results" / "base" / base):
        build_model(folder, vocab_size=300, hidden=16, heads=2)
    (work / "results" / "data").mkdir(parents=True)
    write_eval_prompts(work / "results" / "data" / "eval_prompts.parquet", 3)
    monkeypatch.setenv("DOMAINLLM_SAFE_DEFAULTS_KEY", MARKER)  # the jobs inherit it
    args = ("--cores", "1", "--allowed-rules", "generate", "--configfile", "gen.yaml")
    ok = snakemake("results/generations/sft.parquet", *args, cwd=work)
    openai_stub.always = 500  # the next job fails after its retries, and logs why
    failed = snakemake("results/generations/cpt.parquet", *args, cwd=work, check=False)
    assert pl.read_parquet(work / "results/generations/sft.parquet").height == 3
    assert failed.returncode != 0 and not (work / "results/generations/cpt.parquet").exists()
    assert "HTTP 500" in (work / "logs/generate/cpt.log").read_text()
    posts = [r for r in openai_stub.requests if r[2] is not None]
    assert posts and all(r[1].get("Authorization") == f"Bearer {MARKER}" for r in posts)
    for text in (ok.stdout, ok.stderr, failed.stdout, failed.stderr):
        assert MARKER not in text
    assert grep_tree(work, MARKER.encode()) == []
    assert grep_tree(work, b"DOMAINLLM_SAFE_DEFAULTS_KEY")  # the name is recorded, not the key


def test_a_key_pasted_into_the_config_is_refused_and_not_echoed():
    cfg = copy.deepcopy(TEST_CONFIG)
    cfg["generate"]["openai"] = {"api_key_env": MARKER}
    with pytest.raises(ConfigError, match=r"generate\.openai\.api_key_env.*never goes") as e:
        validate_config(cfg)
    assert MARKER not in str(e.value)


# --------------------------------------------------------------------------- timeouts

HTTP_CALLS = re.compile(
    r"(httpx|requests|urllib\.request|aiohttp)\.(get|post|put|patch|delete|head|request|stream|"
    r"urlopen|Client|AsyncClient|Session|ClientSession)"
)


def test_every_http_call_has_a_timeout():
    calls = 0
    for path, node in source_calls():
        name = call_name(node)
        if HTTP_CALLS.fullmatch(name) or name == "urlopen":
            calls += 1
            assert "timeout" in keywords(node), f"{path}:{node.lineno} {name}(...) has no timeout"
    assert calls >= 2  # the openai backend's client and the server health check
    text = "\n".join(p.read_text(encoding="utf-8") for p in SRC.rglob("*.py"))
    assert "import requests" not in text and "urllib.request" not in text


def test_a_server_that_never_answers_cannot_hang_a_job():
    from domainllm.infer import get_backend

    with socket.socket() as sink:  # accepts connections, never says a word
        sink.bind(("127.0.0.1", 0))
        sink.listen(8)
        url = f"http://127.0.0.1:{sink.getsockname()[1]}/v1"
        t0 = time.monotonic()
        with pytest.raises(PipelineError, match=r"no answer within 0\.5 s.*timeout_s"):
            get_backend("openai", base_url=url, served_model="x", timeout_s=0.5, max_retries=1,
                        backoff_s=0.01, chat=False)  # fmt: skip
        assert time.monotonic() - t0 < 5


# --------------------------------------------------------------------------- XML

PAGE = (
    '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.11/">\n'
    "<page><title>T</title><ns>0</ns><id>1</id><revision><text>{body}</text></revision></page>\n"
    "</mediawiki>\n"
)


def xml_attacks(secret: Path) -> dict[str, str]:
    uri = secret.resolve().as_uri()
    pairs = zip("abcdefgh", "bcdefghi", strict=True)  # i = 10^9 characters when expanded
    laughs = '<!ENTITY a "aaaaaaaaaa">' + "".join(
        f'<!ENTITY {c} "{("&" + p + ";") * 10}">' for p, c in pairs
    )
    return {
        "billion laughs": f"<?xml version='1.0'?>\n<!DOCTYPE m [{laughs}]>\n"
        + PAGE.format(body="&i;"),
        "external entity": f'<?xml version="1.0"?>\n<!DOCTYPE m [<!ENTITY s SYSTEM "{uri}">]>\n'
        + PAGE.format(body="&s;"),
        "external DTD": f'<?xml version="1.0"?>\n<!DOCTYPE mediawiki SYSTEM "{uri}">\n'
        + PAGE.format(body="x"),
        "parameter entity": '<?xml version="1.0"?>\n'
        + f'<!DOCTYPE m [<!ENTITY % p SYSTEM "{uri}"> %p;]>\n'
        + PAGE.format(body="x"),
        "undeclared entity": '<?xml version="1.0"?>\n' + PAGE.format(body="&s;"),
    }


@pytest.mark.parametrize("compress", [None, "bz2"])
@pytest.mark.parametrize("on_error", ["error", "skip"])
@pytest.mark.parametrize(
    "attack",
    ["billion laughs", "external entity", "external DTD", "parameter entity", "undeclared entity"],
)
def test_xml_entities_are_never_expanded_or_fetched(tmp_path, attack, on_error, compress):
    from domainllm.corpus.ingest import ingest_corpus

    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    dump = xml_attacks(secret)[attack].encode()
    path = tmp_path / "dump.xml"
    if compress == "bz2":
        import bz2

        path, dump = tmp_path / "dump.xml.bz2", bz2.compress(dump)
    path.write_bytes(dump)
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"text": "普通の文書です。" * 5}, ensure_ascii=False) + "\n")
    out = tmp_path / "out" / "docs.parquet"
    sources = [
        {"name": "w", "format": "mediawiki", "path": str(path), "lang": "ja", "on_error": on_error},
        {"name": "good", "format": "jsonl", "path": str(good), "lang": "ja"},
    ]
    t0 = time.monotonic()
    if attack == "undeclared entity" and on_error == "skip":
        # Malformed XML, skipped as asked: the reference stays unexpanded and unread.
        ingest_corpus(sources, str(out))
        assert pl.read_parquet(out)["source"].to_list() == ["good"]
        stats = json.loads((out.parent / "docs_stats.json").read_text())["sources"]["w"]
        assert stats["dropped"] == {"skipped_malformed_xml": 1}
    else:
        # A DTD is refused whatever on_error says: nothing is declared, expanded or fetched.
        with pytest.raises(DataError, match=r"dump\.xml(\.bz2)?:\d+.*(DTD|undefined entity)") as e:
            ingest_corpus(sources, str(out))
        assert "TOP-SECRET" not in str(e.value) and "aaaaaaaaaa" not in str(e.value)
        assert not out.exists()
    assert time.monotonic() - t0 < 10
    if out.parent.exists():  # no output or statistics hold the secret or an expansion
        assert grep_tree(out.parent, b"TOP-SECRET") == []
        assert grep_tree(out.parent, b"aaaaaaaaaaaaaaaaaaaa") == []


def test_only_the_guarded_parser_reads_xml():
    """The DTD-refusing expat parser in corpus/readers.py is the only XML parser used."""
    for path, node in source_calls():
        name = call_name(node)
        if re.search(r"(^|\.)(ElementTree|ET|etree|minidom|sax|expat|lxml)\.", name) or name in (
            "parseString",
            "fromstring",
            "iterparse",
            "XMLParser",
        ):
            assert str(path).endswith("corpus/readers.py"), f"{path}:{node.lineno} {name}"
            assert name in ("expat.ParserCreate", "ET.TreeBuilder"), f"{path}:{node.lineno} {name}"


# --------------------------------------------------------------------------- paths


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("corpus.sources[0].path", "/etc/passwd"),
        ("data.domain.path", "../elsewhere/chabsa.jsonl"),
        ("base.candidates[0].source", "~/models/llama"),
        ("paths.results", "/tmp/results"),
        ("sft.chat_template", "config/../../template.jinja"),
        ("evaluate.judge.templates.pointwise", "/srv/judge.yaml"),
    ],
)
def test_paths_outside_the_work_directory_need_allow_outside(key, value):
    cfg = copy.deepcopy(TEST_CONFIG)
    set_key(cfg, key, value)
    with pytest.raises(ConfigError, match=re.escape(f"config key '{key}': '{value}'")) as e:
        validate_config(cfg)
    assert "paths.allow_outside" in str(e.value)
    cfg["paths"]["allow_outside"] = True
    validate_config(cfg)


def set_key(cfg: dict, key: str, value) -> None:
    """Set ``a.b[0].c`` in ``cfg``; a candidate given a source loses its build spec."""
    parts = [int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", key)]
    node = cfg
    for p in parts[:-1]:
        node = node[p]
    node[parts[-1]] = value
    if parts[-1] == "source":
        node.pop("build")


def test_paths_inside_the_work_directory_and_hub_ids_pass():
    cfg = copy.deepcopy(TEST_CONFIG)
    cfg["base"]["candidates"].append({"name": "hub", "source": "rinna/japanese-gpt-neox-small"})
    cfg["data"]["domain"]["path"] = "data/../data/samples/chabsa/chabsa_all.jsonl"
    cfg["evaluate"]["judge"].update(backend="openai", model="/served/name/not/a/path")
    assert validate_config(cfg)["paths"]["allow_outside"] is False


def test_the_workflow_refuses_an_outside_path_before_any_job(tmp_path):
    work = make_workdir(tmp_path)
    cfg = copy.deepcopy(TEST_CONFIG)
    cfg["data"]["jcqa"]["path"] = str(REPO / cfg["data"]["jcqa"]["path"])
    (work / "abs.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True))
    proc = snakemake("-n", "--cores", "1", "--configfile", "abs.yaml", cwd=work, check=False)
    assert proc.returncode != 0
    assert "config key 'data.jcqa.path'" in proc.stdout + proc.stderr
    assert "paths.allow_outside" in proc.stdout + proc.stderr
    cfg["paths"]["allow_outside"] = True
    (work / "abs.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True))
    snakemake("-n", "--cores", "1", "--configfile", "abs.yaml", cwd=work)
