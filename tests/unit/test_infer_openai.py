"""Protocol tests of the ``openai`` backend against a local HTTP stub server.

The stub (``http.server`` in a thread, on 127.0.0.1) answers with JSON in the
OpenAI format (``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``) and
can be told to fail, stall or rate-limit. It checks the client side of the
protocol: retries with backoff and their bound, timeouts, the bounded number of
requests in flight, order, the API key (sent, never logged), model resolution and
the request bodies. It is not a model: what the generations *contain* is checked
against a real vLLM server in tests/contract/.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import polars as pl
import pytest

from domainllm.errors import PipelineError
from domainllm.infer import SamplingParams, generate, get_backend
from domainllm.infer.serve import free_port
from tests.unit._tiny_lm import build_tokenizer, sample_texts, write_eval_prompts

SECRET = "sk-test-0123456789abcdef-SECRET"


class Stub:
    """State of the stub server: what it answers and what it saw."""

    def __init__(self):
        self.models = [{"id": "tiny", "object": "model", "max_model_len": 64}]
        self.fail = []  # statuses (or "sleep:<s>") answered before a real answer, in order
        self.always = None  # a status answered to every generation request
        self.delay = 0.0  # seconds before answering a generation request
        self.delays = {}  # prompt length -> seconds (to shuffle completion order)
        self.requests = []  # (path, headers, body)
        self.lock = threading.Lock()
        self.in_flight = 0
        self.peak = 0

    def answer(self, path: str, body: dict, max_tokens: int) -> dict:
        n = min(max_tokens, 3)
        prompt = body.get("prompt") or body["messages"][-1]["content"]
        text = f"answer to {len(prompt)}"
        usage = {
            "prompt_tokens": len(prompt),
            "completion_tokens": n,
            "total_tokens": len(prompt) + n,
        }
        if path.endswith("/chat/completions"):
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": {"content": [{"token": "x", "logprob": -0.25, "bytes": [120]}] * n}
                if body.get("logprobs")
                else None,
                "finish_reason": "length",
            }
            kind = "chat.completion"
        else:
            choice = {
                "index": 0,
                "text": text,
                "logprobs": {
                    "tokens": ["x"] * n,
                    "token_logprobs": [-0.5] * n,
                    "top_logprobs": None,
                    "text_offset": list(range(n)),
                }
                if body.get("logprobs") is not None
                else None,
                "finish_reason": "length",
            }
            kind = "text_completion"
        return {
            "id": "cmpl-1",
            "object": kind,
            "created": 0,
            "model": body["model"],
            "choices": [choice],
            "usage": usage,
        }


def make_handler(stub: Stub):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep the test output quiet
            pass

        def _send(self, status: int, payload: dict, headers: dict | None = None):
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            stub.requests.append((self.path, dict(self.headers), None))
            if self.path == "/v1/models":
                self._send(200, {"object": "list", "data": stub.models})
            else:
                self._send(404, {"error": {"message": "not found"}})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with stub.lock:
                stub.requests.append((self.path, dict(self.headers), body))
                stub.in_flight += 1
                stub.peak = max(stub.peak, stub.in_flight)
                planned = stub.fail.pop(0) if stub.fail else stub.always
            try:
                prompt = body.get("prompt") or body["messages"][-1]["content"]
                time.sleep(stub.delay + stub.delays.get(len(prompt), 0.0))
                if isinstance(planned, str) and planned.startswith("sleep:"):
                    time.sleep(float(planned.split(":")[1]))
                    planned = None
                if planned is not None:
                    err = {"error": {"message": f"stub says {planned}", "code": planned}}
                    return self._send(planned, err, {"Retry-After": "0"})
                if self.path.rstrip("/") not in ("/v1/completions", "/v1/chat/completions"):
                    return self._send(404, {"error": {"message": "not found"}})
                max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
                self._send(200, stub.answer(self.path, body, max_tokens))
            finally:
                with stub.lock:
                    stub.in_flight -= 1

    return Handler


@pytest.fixture
def stub():
    state = Stub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A model folder as far as the openai backend reads it: tokenizer, chat template, config."""
    path = tmp_path_factory.mktemp("openai") / "m"
    tok = build_tokenizer(sample_texts(20), 400)
    tok.save_pretrained(path)
    (path / "config.json").write_text(json.dumps({"max_position_embeddings": 128}))
    return path


def backend(stub, model=None, **kw):
    options = {
        "base_url": stub.url,
        "backoff_s": 0.01,
        "max_retries": 3,
        "timeout_s": 5.0,
        "chat": model is not None,
    }
    return get_backend("openai", model=model, **{**options, **kw})


GREEDY = SamplingParams(max_new_tokens=5)


def posts(stub):
    return [r for r in stub.requests if r[2] is not None]


def test_token_ids_with_the_local_chat_template(stub, tokenizer_dir):
    from transformers import AutoTokenizer

    from domainllm.train.chat import format_prompt

    b = backend(stub, str(tokenizer_dir))
    assert b.served_model == "tiny" and b.context == 64  # the server's max_model_len wins
    gens = b.generate(["売上について", "利益"], SamplingParams(max_new_tokens=4, logprobs=True))
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    sent = {tuple(r[2]["prompt"]) for r in posts(stub)}
    expected = {
        tuple(tok(format_prompt(tok, p), add_special_tokens=False)["input_ids"])
        for p in ["売上について", "利益"]
    }
    assert sent == expected
    body = posts(stub)[0][2]
    assert body["model"] == "tiny" and body["max_tokens"] == 4 and body["logprobs"] == 0
    assert body["temperature"] == 0.0 and body["seed"] == 1234
    for g, p in zip(gens, ["売上について", "利益"], strict=True):
        n = len(tok(format_prompt(tok, p), add_special_tokens=False)["input_ids"])
        assert g.prompt_tokens == n and g.output_tokens == 3 and g.logprobs == [-0.5] * 3
        assert g.text == f"answer to {n}" and g.finish_reason == "length" and not g.truncated


def test_long_prompts_truncated_or_refused(stub, tokenizer_dir):
    long = "。".join(sample_texts(3))
    b = backend(stub, str(tokenizer_dir))
    g = b.generate([long], SamplingParams(max_new_tokens=10))[0]
    assert g.truncated and g.prompt_tokens == 64 - 10
    assert len(posts(stub)[-1][2]["prompt"]) == 54
    strict = backend(stub, str(tokenizer_dir), overflow="error")
    n = len(posts(stub))
    with pytest.raises(PipelineError, match="prompt 1 has .* tokens.*generate.overflow"):
        strict.generate(["短い", long], SamplingParams(max_new_tokens=10))
    with pytest.raises(PipelineError, match="max_new_tokens=64 leaves no room"):
        strict.generate(["短い"], SamplingParams(max_new_tokens=64))
    assert len(posts(stub)) <= n + 1  # the refused batch stopped without all its requests


def test_chat_endpoint_sends_messages(stub):
    b = backend(stub, None, endpoint="chat", chat=True)
    g = b.generate(["質問です"], SamplingParams(max_new_tokens=7, logprobs=True, stop=["。"]))[0]
    path, _, body = posts(stub)[-1]
    assert path == "/v1/chat/completions"
    assert body["messages"] == [{"role": "user", "content": "質問です"}]
    assert body["max_completion_tokens"] == 7 and body["logprobs"] is True
    assert body["stop"] == ["。"]
    assert g.text == "answer to 4" and g.output_tokens == 3 and g.logprobs == [-0.25] * 3


def test_completions_with_chat_needs_a_local_tokenizer(stub, tmp_path):
    with pytest.raises(PipelineError, match="no tokenizer.*generate.openai.endpoint"):
        backend(stub, str(tmp_path))
    raw = backend(stub, None)  # chat off: raw text prompts
    raw.generate(["abc"], GREEDY)
    assert posts(stub)[-1][2]["prompt"] == "abc"


def test_retries_429_and_5xx_then_succeeds(stub, caplog):
    stub.fail = [429, 503, 500]
    b = backend(stub, max_retries=3)
    with caplog.at_level(logging.WARNING, logger="domainllm"):
        g = b.generate(["abc"], GREEDY)[0]
    assert g.text == "answer to 3"
    assert len(posts(stub)) == 4
    retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 3
    assert "HTTP 429: stub says 429 (try 1 of 4)" in retries[0]
    assert "HTTP 503" in retries[1] and "HTTP 500" in retries[2]


def test_backoff_doubles_and_is_capped(stub):
    stub.fail = [500, 500, 500, 500]
    b = backend(stub, max_retries=4, backoff_s=0.5, max_backoff_s=1.5)
    waits = []
    b._sleep = waits.append  # record instead of sleeping
    b.generate(["abc"], GREEDY)
    assert len(waits) == 4
    for got, want in zip(waits, [0.5, 1.0, 1.5, 1.5], strict=True):
        assert want <= got <= want * 1.1  # doubling, capped, up to 10% jitter


def test_gives_up_after_max_retries_and_writes_nothing(stub, tokenizer_dir, tmp_path):
    stub.always = 503
    b = backend(stub, max_retries=2)
    with pytest.raises(PipelineError, match=r"failed after 3 tries: HTTP 503: stub says 503"):
        b.generate(["abc"], GREEDY)
    assert len(posts(stub)) == 3

    prompts = tmp_path / "eval_prompts.parquet"
    write_eval_prompts(prompts, 4)
    out = tmp_path / "generations" / "sft.parquet"
    options = {"base_url": stub.url, "max_retries": 1, "backoff_s": 0.01, "max_concurrency": 2}
    with pytest.raises(PipelineError, match="failed after 2 tries"):
        generate(
            str(tokenizer_dir), str(prompts), str(out), backend="openai", backend_options=options
        )
    assert not out.exists()
    assert not out.parent.exists() or not any(out.parent.iterdir())  # no temporary file left


def test_client_errors_fail_at_once(stub):
    stub.fail = [400]
    b = backend(stub)
    with pytest.raises(PipelineError, match="refused: HTTP 400: stub says 400"):
        b.generate(["abc"], GREEDY)
    assert len(posts(stub)) == 1
    stub.fail = [401]
    with pytest.raises(PipelineError, match="HTTP 401.*api_key_env"):
        b.generate(["abc"], GREEDY)


def test_timeout_is_retried_then_reported(stub):
    stub.fail = ["sleep:1.0"]
    b = backend(stub, timeout_s=0.3, max_retries=1)
    t0 = time.monotonic()
    assert b.generate(["abc"], GREEDY)[0].text == "answer to 3"  # the retry got through
    stub.always = None
    stub.delay = 1.0
    with pytest.raises(PipelineError, match=r"failed after 2 tries: no answer within 0.3 s"):
        b.generate(["abc"], GREEDY)
    assert time.monotonic() - t0 < 5


def test_unreachable_server_is_a_clear_error():
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    with pytest.raises(PipelineError, match=r"GET .*/v1/models failed after 3 tries: cannot reach"):
        get_backend("openai", base_url=url, max_retries=2, backoff_s=0.01, chat=False)


def test_concurrency_is_bounded_and_order_kept(stub):
    prompts = ["a" * n for n in range(1, 13)]
    # Shorter prompts answer later: completion order is the reverse of submission order.
    stub.delays = {n: 0.02 * (13 - n) for n in range(1, 13)}
    gens = backend(stub, max_concurrency=3).generate(prompts, GREEDY)
    assert [g.text for g in gens] == [f"answer to {n}" for n in range(1, 13)]
    assert stub.peak == 3
    stub.peak = 0
    backend(stub, max_concurrency=1).generate(prompts[:4], GREEDY)
    assert stub.peak == 1


def test_empty_batch_sends_nothing(stub):
    b = backend(stub)
    assert b.generate([], GREEDY) == []
    assert posts(stub) == []


def test_model_resolution(stub):
    stub.models = [{"id": "a"}, {"id": "b"}]
    with pytest.raises(PipelineError, match="serves 2 models \\(a, b\\).*generate.openai.model"):
        backend(stub)
    assert backend(stub, served_model="b").served_model == "b"
    with pytest.raises(PipelineError, match="does not serve model 'c'.*it serves: a, b"):
        backend(stub, served_model="c")


def test_api_key_is_sent_and_never_logged(stub, monkeypatch, caplog):
    monkeypatch.setenv("DOMAINLLM_TEST_KEY", SECRET)
    errors = []
    with caplog.at_level(logging.DEBUG):  # every logger, httpx and httpcore included
        b = backend(stub, api_key_env="DOMAINLLM_TEST_KEY", max_retries=1)
        b.generate(["abc"], GREEDY)
        stub.fail = [500, 500]
        try:
            b.generate(["abc"], GREEDY)
        except PipelineError as e:
            errors.append(str(e))
        stub.fail = [401]
        try:
            b.generate(["abc"], GREEDY)
        except PipelineError as e:
            errors.append(str(e))
    assert all(r[1].get("Authorization") == f"Bearer {SECRET}" for r in stub.requests)
    assert len(errors) == 2 and caplog.records  # the failures happened and were logged
    assert any("http" in r.name for r in caplog.records)  # the HTTP client's debug lines too
    for text in [caplog.text, *errors, repr(b), str(vars(b))]:
        assert SECRET not in text and SECRET[-10:] not in text


def test_no_key_when_the_variable_is_unset(stub, monkeypatch, caplog):
    monkeypatch.delenv("DOMAINLLM_UNSET_KEY", raising=False)
    with caplog.at_level(logging.INFO, logger="domainllm"):
        backend(stub, api_key_env="DOMAINLLM_UNSET_KEY").generate(["abc"], GREEDY)
    assert all("Authorization" not in r[1] for r in stub.requests)
    assert "DOMAINLLM_UNSET_KEY is not set" in caplog.text


def test_generate_records_backend_and_settings(stub, tokenizer_dir, tmp_path):
    prompts = tmp_path / "eval_prompts.parquet"
    write_eval_prompts(prompts, 3)
    out = tmp_path / "gens.parquet"
    options = {"base_url": stub.url, "model": "tiny", "max_concurrency": 2, "backoff_s": 0.01}
    summary = generate(
        str(tokenizer_dir),
        str(prompts),
        str(out),
        backend="openai",
        backend_options=options,
        max_new_tokens=9,
        seed=7,
    )
    df = pl.read_parquet(out)
    assert df["backend"].to_list() == ["openai"] * 3
    assert df["max_new_tokens"].to_list() == [9] * 3 and df["seed"].to_list() == [7] * 3
    assert df["output"].to_list()[0].startswith("answer to ")
    assert summary["truncated_prompts"] == df["truncated"].sum()
    assert all(r[2]["seed"] == 7 for r in posts(stub))
