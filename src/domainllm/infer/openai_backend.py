"""The ``openai`` backend: any OpenAI-compatible server (a vLLM server, or a hosted API).

One HTTP request per prompt, at most ``max_concurrency`` in flight (a thread pool
over one ``httpx.Client``), each with a timeout and up to ``max_retries`` retries
with exponential backoff on 429, 5xx, timeouts and connection errors; other 4xx
answers fail at once with the server's message. The first prompt that still fails
stops the batch: nothing partial is returned.

Chat template, two ways (``endpoint``):

- ``completions`` (default): the prompt is formatted with the chat template of the
  local model folder's tokenizer and sent as token ids to ``/v1/completions``, so
  the server sees exactly the tokens the ``transformers`` and ``vllm`` backends
  feed the model (and a prompt longer than the context is cut or refused here, by
  the same rule). Needs the model folder (its tokenizer) on this machine; without
  one, raw prompts (``chat: false``) are sent as text.
- ``chat``: ``/v1/chat/completions`` with one user message; the server applies its
  own template (the way to reach hosted APIs, whose tokenizer is not local).

The API key is read from the environment variable named by ``api_key_env`` (the
name lives in the config, never the key) and is sent only in the Authorization
header: it is never logged nor put in an error message.
"""

from __future__ import annotations

import logging
import os
import random
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path

from domainllm.errors import PipelineError
from domainllm.infer.base import (
    OVERFLOW,
    Backend,
    Generation,
    SamplingParams,
    fit_prompt,
    register_backend,
)

log = logging.getLogger(__name__)

ENDPOINTS = ("completions", "chat")
# Answers worth another try: rate limiting and server-side failures.
RETRY_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))


def _finish_reason(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


def _error_text(response) -> str:
    """The server's error message (OpenAI's ``{"error": {"message": ...}}``), shortened."""
    try:
        body = response.json()
        err = body.get("error", body) if isinstance(body, dict) else body
        msg = err.get("message", err) if isinstance(err, dict) else err
    except ValueError:
        msg = response.text
    return str(msg)[:500]


@register_backend("openai")
class OpenAIBackend(Backend):
    """Generate through an OpenAI-compatible HTTP server.

    Args:
        model: the local model folder (its tokenizer and chat template; the weights
            are the server's business). None or a missing folder: no local tokenizer.
        base_url: the API root, e.g. ``http://127.0.0.1:8000/v1``.
        served_model: the model name the server knows (config ``generate.openai.model``);
            None asks ``GET /models`` and takes the only model listed.
        api_key_env: name of the environment variable holding the API key (None or
            unset: no key is sent, as a local vLLM server needs none).
        timeout_s: seconds per HTTP request (connecting, reading).
        max_retries: further tries of a request after a retryable failure.
        backoff_s: the wait before the first retry; it doubles with each retry.
        max_backoff_s: longest wait between tries (also caps a Retry-After header).
        max_concurrency: requests in flight at once.
        endpoint: "completions" (local chat template, token ids) or "chat" (server's template).
        chat: wrap each prompt as a user turn with the chat template.
        overflow: a prompt longer than the context: "truncate" (keep its end) or "error".
        trust_remote_code: allow custom tokenizer code from the model folder.
        transport: an ``httpx`` transport (tests); None uses the network.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        base_url: str = "http://127.0.0.1:8000/v1",
        served_model: str | None = None,
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout_s: float = 60.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        max_concurrency: int = 8,
        endpoint: str = "completions",
        chat: bool = True,
        overflow: str = "truncate",
        trust_remote_code: bool = False,
        transport=None,
        **_: object,
    ):
        import httpx

        if endpoint not in ENDPOINTS:
            raise PipelineError(
                f"config key 'generate.openai.endpoint': {endpoint!r} is not one of {ENDPOINTS}"
            )
        if overflow not in OVERFLOW:
            raise PipelineError(f"overflow must be one of {OVERFLOW}, got {overflow!r}")
        if int(max_concurrency) < 1 or int(max_retries) < 0 or float(timeout_s) <= 0:
            raise PipelineError(
                "config keys 'generate.openai.max_concurrency' >= 1, 'max_retries' >= 0 and "
                f"'timeout_s' > 0 (got {max_concurrency}, {max_retries}, {timeout_s})"
            )
        if endpoint == "chat" and not chat:
            raise PipelineError(
                "config key 'generate.openai.endpoint' is 'chat', which always applies the "
                "server's chat template; use 'completions' for raw prompts"
            )
        self.base_url = base_url.rstrip("/")
        self.endpoint = endpoint
        self.chat = chat
        self.overflow = overflow
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.max_concurrency = int(max_concurrency)
        self._sleep = time.sleep
        self.path = str(model) if model else None
        self.tokenizer = (
            self._load_tokenizer(trust_remote_code) if endpoint == "completions" else None
        )
        if endpoint == "completions" and chat and self.tokenizer is None:
            raise PipelineError(
                f"openai backend: the 'completions' endpoint applies the chat template of the "
                f"local model folder, and {self.path!r} has no tokenizer; set config key "
                "'generate.openai.endpoint' to 'chat' to use the server's template"
            )

        headers = {}
        if api_key_env:
            key = os.environ.get(api_key_env)
            if key:
                headers["Authorization"] = f"Bearer {key}"
            else:
                log.info("environment variable %s is not set: sending no API key", api_key_env)
        self.client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(self.timeout_s),
            limits=httpx.Limits(
                max_connections=self.max_concurrency,
                max_keepalive_connections=self.max_concurrency,
            ),
            transport=transport,
        )
        self.served_model, self.context = self._resolve_model(served_model)
        log.info(
            "openai backend: %s, model %s, endpoint %s, context %s",
            self.base_url,
            self.served_model,
            self.endpoint,
            self.context,
        )

    # -- set-up ---------------------------------------------------------------------------

    def _load_tokenizer(self, trust_remote_code: bool):
        if not self.path or not Path(self.path).is_dir():
            return None
        p = Path(self.path)
        if not any((p / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
            return None
        from domainllm.models.tokenizer import load_tokenizer

        return load_tokenizer(self.path, trust_remote_code=trust_remote_code)

    def _local_context(self) -> int | None:
        if not self.path or not (Path(self.path) / "config.json").is_file():
            return None
        import json

        cfg = json.loads((Path(self.path) / "config.json").read_text())
        return cfg.get("max_position_embeddings")

    def _resolve_model(self, served_model: str | None) -> tuple[str, int | None]:
        """The model name to request and its context length (the server's, else the folder's)."""
        listing = self._request("GET", "/models", None, missing_ok=True)
        cards = listing.get("data", []) if isinstance(listing, dict) else []
        names = [c.get("id") for c in cards if isinstance(c, dict)]
        if served_model is None:
            if len(names) != 1:
                raise PipelineError(
                    f"openai backend: {self.base_url} serves {len(names)} models "
                    f"({', '.join(map(str, names[:10])) or 'none listed'}); name one in config "
                    "key 'generate.openai.model'"
                )
            served_model = names[0]
        elif names and served_model not in names:
            raise PipelineError(
                f"openai backend: {self.base_url} does not serve model '{served_model}' "
                f"(config key 'generate.openai.model'; it serves: {', '.join(names[:10])})"
            )
        card = next((c for c in cards if c.get("id") == served_model), {})
        context = card.get("max_model_len") or self._local_context()
        return served_model, context

    # -- HTTP -----------------------------------------------------------------------------

    def _delay(self, retry: int, retry_after: str | None) -> float:
        """Seconds to wait before retry number ``retry`` (1-based): doubling, capped, jittered."""
        delay = min(self.max_backoff_s, self.backoff_s * 2 ** (retry - 1))
        if retry_after:
            try:
                delay = max(delay, min(self.max_backoff_s, float(retry_after)))
            except ValueError:
                pass  # an HTTP date: keep our own backoff
        return delay * random.uniform(1.0, 1.1)

    def _request(self, method: str, path: str, body: dict | None, *, missing_ok: bool = False):
        """One API call with retries; the decoded JSON answer.

        Raises:
            PipelineError: a non-retryable 4xx answer at once; a retryable failure
                (429, 5xx, timeout, connection) after ``max_retries`` retries.
        """
        import httpx

        url = self.base_url + path
        tries = self.max_retries + 1
        last, retry_after = "", None
        for attempt in range(tries):
            if attempt:
                delay = self._delay(attempt, retry_after)
                log.warning(
                    "%s %s: %s (try %d of %d); retrying in %.2f s",
                    method,
                    url,
                    last,
                    attempt,
                    tries,
                    delay,
                )
                self._sleep(delay)
            retry_after = None
            try:
                r = self.client.request(method, url, json=body)
            except httpx.TimeoutException as e:
                last = f"no answer within {self.timeout_s:g} s ({type(e).__name__})"
                continue
            except httpx.TransportError as e:
                last = f"cannot reach the server ({type(e).__name__}: {e})"
                continue
            if r.status_code in RETRY_STATUS:
                last = f"HTTP {r.status_code}: {_error_text(r)}"
                retry_after = r.headers.get("retry-after")
                continue
            if r.status_code == 404 and missing_ok:
                return None
            if r.status_code >= 400:
                hint = " (check the API key in the variable named by generate.openai.api_key_env)"
                raise PipelineError(
                    f"openai backend: {method} {url} refused: HTTP {r.status_code}: "
                    f"{_error_text(r)}{hint if r.status_code in (401, 403) else ''}"
                )
            try:
                return r.json()
            except ValueError as e:
                raise PipelineError(
                    f"openai backend: {method} {url} answered non-JSON: {r.text[:200]!r}"
                ) from e
        raise PipelineError(
            f"openai backend: {method} {url} failed after {tries} tries: {last} "
            "(config keys generate.openai.base_url, timeout_s, max_retries)"
        )

    # -- generation -----------------------------------------------------------------------

    def _body(self, prompt: str, index: int, params: SamplingParams) -> tuple[dict, int, bool]:
        """The request for one prompt, its local token count (0: unknown) and truncation."""
        body: dict = {
            "model": self.served_model,
            "temperature": float(params.temperature),
            "top_p": float(params.top_p) if params.temperature > 0 else 1.0,
            "seed": params.seed,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if params.logit_bias:
            body["logit_bias"] = {str(k): v for k, v in params.logit_bias.items()}
        if self.endpoint == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
            body["max_completion_tokens"] = params.max_new_tokens
            if params.logprobs:
                body["logprobs"] = True
            return body, 0, False
        body["max_tokens"] = params.max_new_tokens
        if params.logprobs:
            body["logprobs"] = 0  # the chosen token's log-probability, no alternatives
        if self.tokenizer is None:
            body["prompt"] = prompt
            return body, 0, False
        ids, truncated = fit_prompt(
            self.tokenize(prompt),
            context=self.context,
            max_new_tokens=params.max_new_tokens,
            overflow=self.overflow,
            index=index,
            where=f"{self.served_model} at {self.base_url}",
        )
        body["prompt"] = ids
        return body, len(ids), truncated

    def _one(self, prompt: str, index: int, params: SamplingParams) -> Generation:
        body, n_ids, truncated = self._body(prompt, index, params)
        path = "/chat/completions" if self.endpoint == "chat" else "/completions"
        answer = self._request("POST", path, body)
        try:
            choice = answer["choices"][0]
            usage = answer.get("usage") or {}
            if self.endpoint == "chat":
                text = choice["message"].get("content") or ""
                lps = (
                    [float(t["logprob"]) for t in (choice.get("logprobs") or {}).get("content", [])]
                    if params.logprobs
                    else None
                )
            else:
                text = choice["text"]
                lps = (
                    [float(x) for x in (choice.get("logprobs") or {}).get("token_logprobs", [])]
                    if params.logprobs
                    else None
                )
            output_tokens = int(usage.get("completion_tokens", len(lps) if lps else 0))
            prompt_tokens = int(usage.get("prompt_tokens", n_ids))
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise PipelineError(
                f"openai backend: unexpected answer to prompt {index} from {self.base_url}{path}: "
                f"{str(answer)[:300]}"
            ) from e
        if n_ids and prompt_tokens != n_ids:
            log.warning(
                "prompt %d: server counted %d prompt tokens, %d were sent",
                index,
                prompt_tokens,
                n_ids,
            )
        return Generation(
            text=text,
            prompt_tokens=prompt_tokens,
            output_tokens=output_tokens,
            finish_reason=_finish_reason(choice.get("finish_reason")),
            logprobs=lps,
            truncated=truncated,
        )

    def _generate(self, prompts: list[str], params: SamplingParams) -> list[Generation]:
        from tqdm import tqdm

        results: list[Generation | None] = [None] * len(prompts)
        workers = min(self.max_concurrency, len(prompts))
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="openai")
        try:
            futures = {pool.submit(self._one, p, i, params): i for i, p in enumerate(prompts)}
            pending = set(futures)
            with tqdm(
                total=len(prompts), desc="generate", unit="prompt", disable=len(prompts) < 8
            ) as bar:
                while pending:
                    done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    for f in done:
                        results[futures[f]] = f.result()  # re-raises the first failure
                        bar.update(1)
        finally:
            # On a failure: drop the prompts not yet started, let the running ones end.
            pool.shutdown(wait=True, cancel_futures=True)
        return results  # type: ignore[return-value]

    def close(self) -> None:
        self.client.close()

    def __repr__(self) -> str:
        return f"OpenAIBackend({self.base_url!r}, model={self.served_model!r})"
