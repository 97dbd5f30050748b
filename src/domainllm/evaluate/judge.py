"""LLM-as-a-judge as classification: P(Yes) / (P(Yes) + P(No)) of the judge's next token.

A judge is a language model asked a Yes/No question about a text (a YAML prompt
template, ``config/judge/*.yaml``):

- ``pointwise``: "Is this answer good?" -> P(good) of one answer;
- ``pairwise``: "Is A better than B?" -> run in both orders, so position bias shows;
- ``similarity``: "Do these two sentences mean the same?" -> checked against graded
  human similarity (JSTS).

The score is read from the next-token distribution, never from sampled text:

- ``transformers`` (local model): from the logits. Every vocabulary token that decodes
  (NFKC, stripped of spaces and quotes, case-folded) to a yes word ("Yes", " yes",
  "はい", ...) adds to P(Yes), likewise for no. A word no single token spells (tiny
  tokenizers split "はい") is scored as a multi-token continuation.
- ``openai`` (an OpenAI-compatible server: vLLM, a hosted API): ``top_logprobs`` of one
  generated token, with ``logit_bias`` lifting the yes/no token ids where the server's
  tokenizer is known locally; the returned tokens are matched to the words by string
  and renormalised over yes/no (a bias added equally to all of them leaves the ratio
  unchanged).

A reply whose top log-probabilities (``top_logprobs`` most likely next tokens) hold
no yes/no token has no verdict: its score is NaN and it is counted, never 0.5. A
reply with no log-probabilities at all (a server that ignores the request for them)
stops the job: nothing could ever be read from it.

The ``judge`` evaluator kind (:class:`JudgeEvaluator`) is a folder written by
:func:`prepare_judge` (rule ``prepare_judge``): evaluator.json with the backend, the
model and the templates' content, tokens.json with the yes/no token map, and a model
card. ``load_evaluator(folder).score(texts)`` gives pointwise P(good) like the trained
evaluators, so the judge is validated and used the same way.

Usage:
    from domainllm.evaluate.feedback import load_evaluator
    judge = load_evaluator("results/evaluators/judge")
    judge.pointwise(["日本の首都は？"], ["東京です。"])[0].p_yes
"""

from __future__ import annotations

import logging
import math
import string
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from domainllm.errors import DataError, PipelineError
from domainllm.evaluate.feedback import register_evaluator, split_dialogue
from domainllm.io import atomic_path, read_json, write_json, write_text

log = logging.getLogger(__name__)

# Placeholders each mode's prompt must use, exactly.
MODES = {
    "pointwise": ("question", "answer"),
    "pairwise": ("question", "answer_a", "answer_b"),
    "similarity": ("sentence1", "sentence2"),
}
TEMPLATE_KEYS = {
    "name",
    "version",
    "mode",
    "lang",
    "prompt",
    "answer_prefix",
    "yes_words",
    "no_words",
}
REQUIRED_KEYS = {"name", "mode", "prompt", "yes_words", "no_words"}
BACKENDS = ("transformers", "openai")
# Stripped from a decoded token before it is compared with the yes/no words.
_STRIP = " \t\r\n\u3000.,!?:;。、！？：「」『』\"'`*()（）[]"


# ---------------------------------------------------------------- templates


@dataclass(frozen=True)
class JudgeTemplate:
    """A judge prompt: the question put to the model and its yes/no words."""

    name: str
    mode: str
    prompt: str
    yes: tuple[str, ...]
    no: tuple[str, ...]
    version: int = 1
    lang: str = ""
    answer_prefix: str = ""
    path: str = ""

    def render(self, **fields: str) -> str:
        """The prompt with the mode's placeholders filled in."""
        return self.prompt.format(**fields)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "mode": self.mode,
            "lang": self.lang,
            "prompt": self.prompt,
            "answer_prefix": self.answer_prefix,
            "yes_words": list(self.yes),
            "no_words": list(self.no),
            "path": self.path,
        }


def normalise_word(text: str) -> str:
    """How a decoded token is compared with a yes/no word: NFKC, stripped, case-folded.

    Byte-level BPE and SentencePiece word markers (``Ġ``, ``▁``) count as spaces, for
    servers that return raw token strings.
    """
    text = unicodedata.normalize("NFKC", text.replace("Ġ", " ").replace("▁", " "))
    return text.strip(_STRIP).casefold()


def template_from_dict(spec: dict, where: str) -> JudgeTemplate:
    """Check a template mapping (``where`` names it in errors) and build the template."""
    if not isinstance(spec, dict):
        raise DataError(f"{where}: a judge template must be a mapping")
    if any(isinstance(k, bool) for k in spec):
        raise DataError(
            f"{where}: a key reads as true/false: YAML takes a bare yes/no/on/off for a "
            "boolean; the word lists are yes_words and no_words"
        )
    unknown = sorted(str(k) for k in set(spec) - TEMPLATE_KEYS - {"path"})
    if unknown:
        raise DataError(
            f"{where}: unknown key(s) {', '.join(unknown)} "
            f"(allowed: {', '.join(sorted(TEMPLATE_KEYS))})"
        )
    missing = sorted(REQUIRED_KEYS - set(spec))
    if missing:
        raise DataError(f"{where}: missing key(s) {', '.join(missing)}")
    mode = spec["mode"]
    if mode not in MODES:
        raise DataError(f"{where}: key 'mode': '{mode}' is not one of {', '.join(MODES)}")
    prompt = spec["prompt"]
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError(f"{where}: key 'prompt' must be a non-empty string")
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(prompt) if f is not None}
    except ValueError as e:
        raise DataError(f"{where}: key 'prompt': bad placeholder syntax ({e})") from e
    if fields != set(MODES[mode]):
        raise DataError(
            f"{where}: key 'prompt': a {mode} prompt uses the placeholders "
            f"{{{'}, {'.join(MODES[mode])}}} exactly, found {sorted(fields)}"
        )
    words = {}
    for key in ("yes", "no"):
        value = spec[f"{key}_words"]
        if not isinstance(value, list) or not value:
            raise DataError(f"{where}: key '{key}_words' must be a non-empty list of words")
        for w in value:
            if not isinstance(w, str) or not normalise_word(w):
                hint = " (quote it: YAML reads a bare yes/no as a boolean)" * isinstance(w, bool)
                raise DataError(f"{where}: key '{key}_words': {w!r} is not a word{hint}")
        words[key] = tuple(value)
    both = {normalise_word(w) for w in words["yes"]} & {normalise_word(w) for w in words["no"]}
    if both:
        raise DataError(f"{where}: word(s) {sorted(both)} are both yes and no")
    prefix = spec.get("answer_prefix") or ""
    if not isinstance(prefix, str):
        raise DataError(f"{where}: key 'answer_prefix' must be a string")
    return JudgeTemplate(
        name=str(spec["name"]),
        mode=mode,
        prompt=prompt,
        yes=words["yes"],
        no=words["no"],
        version=int(spec.get("version", 1)),
        lang=str(spec.get("lang", "")),
        answer_prefix=prefix,
        path=str(spec.get("path", "")),
    )


def load_template(path: str | Path) -> JudgeTemplate:
    """Read and check a judge template YAML file.

    Raises:
        DataError: naming the file and the key that is wrong.
    """
    import yaml

    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise DataError(f"{path}: cannot read judge template: {e}") from e
    except yaml.YAMLError as e:
        raise DataError(f"{path}: not valid YAML: {e}") from e
    return template_from_dict({**(spec or {}), "path": str(path)}, str(path))


# ---------------------------------------------------------------- yes/no tokens


def token_variants(tokenizer, yes: tuple[str, ...], no: tuple[str, ...]) -> dict:
    """Every vocabulary token that decodes to a yes or no word, and the words no token spells.

    Returns:
        ``{"yes": {id: piece}, "no": {id: piece}, "yes_sequences": [[ids]...],
        "no_sequences": [[ids]...]}``: ``*_sequences`` are the token sequences of the
        surface forms (as written, capitalised, upper, lower, each with and without a
        leading space) of the words that no single token decodes to.
    """
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    n = len(tokenizer)
    pieces = tokenizer.batch_decode([[i] for i in range(n)])
    targets = {"yes": {normalise_word(w) for w in yes}, "no": {normalise_word(w) for w in no}}
    out: dict = {"yes": {}, "no": {}, "yes_sequences": [], "no_sequences": []}
    found = {"yes": set(), "no": set()}
    for i, piece in enumerate(pieces):
        if i in special:
            continue
        word = normalise_word(piece)
        for side in ("yes", "no"):
            if word in targets[side]:
                out[side][i] = piece
                found[side].add(word)
    for side, words in (("yes", yes), ("no", no)):
        seqs = set()
        for w in words:
            if normalise_word(w) in found[side]:
                continue
            for form in {w, w.capitalize(), w.upper(), w.lower()}:
                for text in (form, " " + form):
                    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
                    if len(ids) > 1 and normalise_word(tokenizer.decode(ids)) == normalise_word(w):
                        seqs.add(tuple(ids))
        out[f"{side}_sequences"] = [list(s) for s in sorted(seqs)]
    return out


def classify_token(token: str, yes: set[str], no: set[str]) -> str | None:
    """'yes', 'no' or None for a token string (``yes``/``no``: normalised words)."""
    word = normalise_word(token)
    if word in yes:
        return "yes"
    if word in no:
        return "no"
    return None


@dataclass
class Verdict:
    """The judge's answer to one prompt.

    Attributes:
        p_yes: P(Yes) / (P(Yes) + P(No)); NaN when no yes/no token is among the top
            log-probabilities (no verdict).
        found: a yes/no token is among the ``top_logprobs`` most likely next tokens.
        mass: P(Yes) + P(No) of the next token (how much of the distribution is an
            answer at all); NaN when the backend does not show it.
        top: the most likely next token (what the judge "said"), for diagnostics.
    """

    p_yes: float
    found: bool
    mass: float = float("nan")
    top: str = ""


def _logsumexp(values: list[float]) -> float:
    values = [v for v in values if v > -math.inf]
    if not values:
        return -math.inf
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))


def verdict_from_logprobs(
    yes_lps: list[float], no_lps: list[float], found: bool, *, top: str = "", mass: bool = True
) -> Verdict:
    """P(Yes) renormalised over yes/no from the log-probabilities of their tokens."""
    if not found:
        return Verdict(float("nan"), False, float("nan"), top)
    ly, ln = _logsumexp(yes_lps), _logsumexp(no_lps)
    both = _logsumexp([ly, ln])
    p_yes = math.exp(ly - both) if both > -math.inf else float("nan")
    return Verdict(p_yes, True, math.exp(both) if mass else float("nan"), top)


# ---------------------------------------------------------------- backends


class LocalJudgeLM:
    """A transformers causal LM read as a judge, from its logits.

    Args:
        model: model folder (a GPTQ folder loads too).
        chat: wrap each prompt as a user turn with the tokenizer's chat template.
        top_logprobs: a verdict needs a yes/no token (or word) at least as likely as
            the ``top_logprobs``-th most likely next token (the vocabulary size or more:
            always a verdict).
        batch_size: prompts per forward pass.
        device: "cuda", "cpu", ...; None picks CUDA when available.
        trust_remote_code: allow custom model code from the folder.
    """

    def __init__(
        self,
        model: str,
        *,
        chat: bool = True,
        top_logprobs: int = 20,
        batch_size: int = 8,
        device: str | None = None,
        trust_remote_code: bool = False,
    ):
        from domainllm.models.loading import load_for_inference

        self.path = str(model)
        self.chat = chat
        self.top_logprobs = int(top_logprobs)
        self.batch_size = max(1, int(batch_size))
        self.model, self.tokenizer = load_for_inference(
            self.path, trust_remote_code=trust_remote_code, device=device
        )
        self.device = next(self.model.parameters()).device
        self.context = getattr(self.model.config, "max_position_embeddings", None)
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id or 0
        self._variants: dict = {}
        self.truncated = 0

    def variants(self, yes: tuple[str, ...], no: tuple[str, ...]) -> dict:
        key = (yes, no)
        if key not in self._variants:
            self._variants[key] = token_variants(self.tokenizer, yes, no)
        return self._variants[key]

    def encode(self, prompt: str, answer_prefix: str, room: int) -> list[int]:
        """Token ids of a judge prompt, cut from the left to leave ``room`` positions."""
        text = prompt
        if self.chat:
            from domainllm.train.chat import format_prompt

            text = format_prompt(self.tokenizer, prompt)
        ids = self.tokenizer(text + answer_prefix, add_special_tokens=not self.chat)["input_ids"]
        if self.context and len(ids) + room > self.context:
            keep = self.context - room
            log.debug("judge prompt of %d tokens cut to its last %d", len(ids), keep)
            self.truncated += 1
            ids = ids[-keep:]
        return ids

    def _batch(self, seqs: list[list[int]], words: list[list[int]]):
        """Next-token log-probabilities of each prompt and log P(word) of each multi-token word.

        The prompts run once (left padding, so every prompt ends at the same column);
        the words continue from the prompts' key/value cache, all words of all prompts
        in one batch, so a word costs its own few tokens, not another prompt pass.

        Returns:
            (next_lps [n, vocab] tensor, word_lps [n, len(words)] tensor).
        """
        import torch

        n, width = len(seqs), max(len(s) for s in seqs)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, width - len(seq) :] = torch.tensor(seq)
            mask[row, width - len(seq) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        dev = self.device
        with torch.inference_mode():
            out = self.model(
                input_ids=ids.to(dev),
                attention_mask=mask.to(dev),
                position_ids=positions.to(dev),
                use_cache=bool(words),
                logits_to_keep=1,
            )
            next_lps = out.logits[:, -1].float().log_softmax(-1)
            word_lps = torch.zeros((n, len(words)))
            if words:
                k, span = len(words), max(len(w) for w in words) - 1
                cont = torch.full((k, span), self.pad_id, dtype=torch.long)
                for j, w in enumerate(words):
                    cont[j, : len(w) - 1] = torch.tensor(w[:-1])
                cache = out.past_key_values
                cache.batch_repeat_interleave(k)
                lengths = mask.sum(-1, keepdim=True).repeat_interleave(k, 0)
                cont_lps = (
                    self.model(
                        input_ids=cont.repeat(n, 1).to(dev),
                        attention_mask=torch.cat(
                            [
                                mask.repeat_interleave(k, 0),
                                torch.ones((n * k, span), dtype=torch.long),
                            ],
                            dim=1,
                        ).to(dev),
                        position_ids=(lengths + torch.arange(span)).to(dev),
                        past_key_values=cache,
                        use_cache=True,
                    )
                    .logits.float()
                    .log_softmax(-1)
                    .view(n, k, span, -1)
                )
                for j, w in enumerate(words):
                    total = next_lps[:, w[0]].clone()
                    for step, t in enumerate(w[1:]):
                        total += cont_lps[:, j, step, t]
                    word_lps[:, j] = total.cpu()
        return next_lps.cpu(), word_lps

    def verdicts(self, prompts: list[str], template: JudgeTemplate) -> list[Verdict]:
        """One :class:`Verdict` per prompt (already rendered from ``template``)."""
        import torch

        var = self.variants(template.yes, template.no)
        words = var["yes_sequences"] + var["no_sequences"]
        n_yes_words = len(var["yes_sequences"])
        longest = max([len(w) for w in words] + [1])
        cut_before = self.truncated
        encoded = [self.encode(p, template.answer_prefix, longest) for p in prompts]
        if self.truncated > cut_before:
            log.warning(
                "%d of %d judge prompts cut from the left to fit %s positions",
                self.truncated - cut_before,
                len(prompts),
                self.context,
            )
        yes_ids = torch.tensor(sorted(var["yes"]), dtype=torch.long)
        no_ids = torch.tensor(sorted(var["no"]), dtype=torch.long)
        out: list[Verdict | None] = [None] * len(prompts)
        # Longest first: little padding, and a too-large batch fails at once.
        order = sorted(range(len(prompts)), key=lambda i: (-len(encoded[i]), i))
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            next_lps, word_lps = self._batch([encoded[i] for i in batch], words)
            if self.top_logprobs >= next_lps.shape[-1]:  # the whole vocabulary: always a verdict
                kth = torch.full((len(batch),), -math.inf)
            else:
                kth = next_lps.topk(self.top_logprobs, dim=-1).values[:, -1]
            for row, i in enumerate(batch):
                lp, wl = next_lps[row], word_lps[row].tolist()
                ylp = lp[yes_ids].tolist() + wl[:n_yes_words]
                nlp = lp[no_ids].tolist() + wl[n_yes_words:]
                found = any(x >= float(kth[row]) for x in ylp + nlp)
                top = self.tokenizer.decode([int(lp.argmax())])
                out[i] = verdict_from_logprobs(ylp, nlp, found, top=top)
        return out  # type: ignore[return-value]

    def close(self) -> None:
        import gc

        del self.model
        gc.collect()


class OpenAIJudgeLM:
    """A judge behind an OpenAI-compatible server, through the ``openai`` inference backend.

    The backend does the set-up (API key from the environment, the served model name,
    the local tokenizer and chat template, retries); the judge sends its own requests:
    one generated token with ``top_logprobs`` alternatives (``logprobs: k`` on
    ``/completions``, ``top_logprobs: k`` on ``/chat/completions``) and a
    ``logit_bias`` on the yes/no token ids when the tokenizer is local.

    Args:
        model: the local model folder (its tokenizer: chat template and yes/no token
            ids), or None for a hosted model whose tokenizer is not here.
        top_logprobs: alternatives asked for (OpenAI allows up to 20 on chat, 5 on
            completions; vLLM up to its ``--max-logprobs``).
        logit_bias: added to every yes/no token id (0: none). Equal for all of them,
            so P(Yes) / (P(Yes) + P(No)) is unchanged; it makes them reach the top.
        backend_options: keyword arguments of the ``openai`` backend (base_url,
            served_model, api_key_env, endpoint, timeout_s, max_retries, transport...).
    """

    def __init__(
        self,
        model: str | None,
        *,
        top_logprobs: int = 20,
        logit_bias: float = 100.0,
        chat: bool = True,
        **backend_options,
    ):
        from domainllm.infer.base import get_backend

        self.backend = get_backend("openai", model=model, chat=chat, **backend_options)
        self.top_logprobs = int(top_logprobs)
        self.logit_bias = float(logit_bias)
        self.tokenizer = getattr(self.backend, "tokenizer", None)
        self._variants: dict = {}
        self.truncated = 0

    def variants(self, yes: tuple[str, ...], no: tuple[str, ...]) -> dict:
        key = (yes, no)
        if key not in self._variants:
            if self.tokenizer is None:
                self._variants[key] = {"yes": {}, "no": {}, "yes_sequences": [], "no_sequences": []}
            else:
                self._variants[key] = token_variants(self.tokenizer, yes, no)
        return self._variants[key]

    def _body(self, prompt: str, template: JudgeTemplate) -> tuple[str, dict]:
        var = self.variants(template.yes, template.no)
        body: dict = {"model": self.backend.served_model, "temperature": 0.0}
        if self.logit_bias and (var["yes"] or var["no"]):
            body["logit_bias"] = {str(i): self.logit_bias for i in [*var["yes"], *var["no"]]}
        if self.backend.endpoint == "chat":
            content = prompt + (f"\n{template.answer_prefix}" if template.answer_prefix else "")
            body.update(
                messages=[{"role": "user", "content": content}],
                max_completion_tokens=1,
                logprobs=True,
                top_logprobs=self.top_logprobs,
            )
            return "/chat/completions", body
        body.update(max_tokens=1, logprobs=self.top_logprobs)
        if self.tokenizer is None:
            body["prompt"] = prompt + template.answer_prefix
            return "/completions", body
        from domainllm.infer.base import fit_prompt

        text = self.backend.format_prompt(prompt) + template.answer_prefix
        ids = self.tokenizer(text, add_special_tokens=not self.backend.chat)["input_ids"]
        ids, cut = fit_prompt(ids, context=self.backend.context, max_new_tokens=1)
        self.truncated += int(cut)
        body["prompt"] = ids
        return "/completions", body

    def _top(self, answer: dict, path: str) -> list[tuple[str, float]]:
        """(token, log-probability) alternatives of the first generated token.

        An empty list: the reply carries no log-probabilities at all (the server
        ignored the request for them), which :meth:`verdicts` refuses.
        """
        choice = answer["choices"][0]
        lp = choice.get("logprobs") or {}
        if path == "/chat/completions":
            content = lp.get("content") or []
            if not content:
                return []
            tops = content[0].get("top_logprobs") or []
            return [(t["token"], float(t["logprob"])) for t in tops]
        tops = lp.get("top_logprobs") or []
        if not tops or tops[0] is None:
            return []
        return [(t, float(v)) for t, v in tops[0].items()]

    def verdicts(self, prompts: list[str], template: JudgeTemplate) -> list[Verdict]:
        yes = {normalise_word(w) for w in template.yes}
        no = {normalise_word(w) for w in template.no}
        out = []
        for i, prompt in enumerate(prompts):
            path, body = self._body(prompt, template)
            answer = self.backend._request("POST", path, body)  # noqa: SLF001 - see class doc
            try:
                top = self._top(answer, path)
            except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
                raise PipelineError(
                    f"judge: unexpected answer to prompt {i} from {self.backend.base_url}{path}: "
                    f"{str(answer)[:300]}"
                ) from e
            if not top:
                # Without log-probabilities there is nothing to read P(Yes) from; scoring
                # every item "no verdict" would hide a server that ignores logprobs.
                raise PipelineError(
                    f"judge: the reply to prompt {i} from {self.backend.base_url}{path} has no "
                    "log-probabilities of its first token (no yes/no token to read): does the "
                    f"server return logprobs? vLLM needs --max-logprobs >= {self.top_logprobs} "
                    "(config key evaluate.judge.top_logprobs); reply: "
                    f"{str(answer)[:300]}"
                )
            ylp = [v for t, v in top if classify_token(t, yes, no) == "yes"]
            nlp = [v for t, v in top if classify_token(t, yes, no) == "no"]
            biased_mass = math.exp(_logsumexp(ylp + nlp))
            if "logit_bias" in body and biased_mass < 0.5:
                # With the bias on every yes/no id they hold nearly all the mass of
                # biased log-probabilities; far less means the server reported them
                # before the bias, where a missing side would read as P = 0.
                raise PipelineError(
                    f"judge: {self.backend.base_url}{path} reports log-probabilities before "
                    f"the logit_bias (yes/no hold {biased_mass:.3g} of "
                    "the mass after a bias of "
                    f"{self.logit_bias:g}), so its top_logprobs cannot be renormalised over "
                    "yes/no: start vLLM with --logprobs-mode processed_logprobs (config key "
                    "generate.serve.extra_args), or set evaluate.judge.openai.logit_bias: 0 "
                    "to read unbiased top log-probabilities"
                )
            best = max(top, key=lambda x: x[1])[0] if top else ""
            # Biased log-probabilities say nothing about the unbiased yes/no mass.
            out.append(
                verdict_from_logprobs(
                    ylp, nlp, bool(ylp or nlp), top=best, mass="logit_bias" not in body
                )
            )
        return out

    def close(self) -> None:
        self.backend.close()


# ---------------------------------------------------------------- the evaluator


def pairwise_summary(p_ab: np.ndarray, p_ba: np.ndarray) -> dict:
    """Preference for the first text of each pair, from both presentation orders.

    Args:
        p_ab: P(Yes) to "is A better than B?" with the pair's first text as A (NaN: no verdict).
        p_ba: the same with the texts swapped.

    Returns:
        ``preference`` (per pair: mean of p_ab and 1 - p_ba where both exist, the one
        that exists otherwise, NaN when neither), ``flip_rate`` (share of pairs judged
        in both orders whose preferred text changes with the order: the judge said the
        same word both times), ``mean_p_when_first`` and ``mean_p_when_second`` (mean
        P(first text better) when it is shown first, and when shown second),
        ``p_yes_mean`` (mean P(A better) over all presentations: 0.5 = no leaning to
        either position), and counts.
    """
    p_ab, p_ba = np.asarray(p_ab, float), np.asarray(p_ba, float)
    when_first, when_second = p_ab, 1 - p_ba
    stacked = np.vstack([when_first, when_second])
    counts = (~np.isnan(stacked)).sum(axis=0)
    preference = np.where(counts > 0, np.nansum(stacked, axis=0) / np.maximum(counts, 1), np.nan)
    both = ~np.isnan(p_ab) & ~np.isnan(p_ba)
    flips = (p_ab[both] > 0.5) == (p_ba[both] > 0.5)
    every = np.concatenate([p_ab, p_ba])

    def mean(x):
        x = x[~np.isnan(x)]
        return float(x.mean()) if len(x) else float("nan")

    return {
        "preference": preference,
        "flip_rate": float(flips.mean()) if both.any() else float("nan"),
        "mean_p_when_first": mean(when_first),
        "mean_p_when_second": mean(when_second),
        "p_yes_mean": mean(every),
        "pairs": int(len(p_ab)),
        "pairs_both_orders": int(both.sum()),
        "no_verdict": int(np.isnan(every).sum()),
        "prompts": int(len(every)),
    }


def _cut(text: str, limit: int | None, *, keep_end: bool = False) -> str:
    text = "" if text is None else str(text)
    if not limit or len(text) <= limit:
        return text
    return ("…" + text[-limit:]) if keep_end else (text[:limit] + "…")


@register_evaluator("judge")
class JudgeEvaluator:
    """An LLM judge behind the evaluator interface (see the module docstring).

    ``score(texts)`` reads each text as a dialogue (the last answer and what came
    before it) and returns the pointwise P(good), NaN where the judge gave no verdict.
    """

    abstains = True  # may return NaN (no verdict); callers count those

    def __init__(self, spec: dict, folder: str | Path = ""):
        self.spec = spec
        self.folder = str(folder)
        self.templates = {
            mode: template_from_dict(t, f"{folder}/evaluator.json: templates.{mode}")
            for mode, t in spec["templates"].items()
        }
        self.max_field_chars = spec.get("max_field_chars")
        self._lm = None
        self.last_verdicts: list[Verdict] = []

    @classmethod
    def load(cls, folder: str | Path) -> JudgeEvaluator:
        spec = read_json(Path(folder) / "evaluator.json")
        for key in ("backend", "model", "templates"):
            if key not in spec:
                raise DataError(f"{folder}/evaluator.json: missing key '{key}'")
        return cls(spec, folder)

    @property
    def lm(self):
        """The judge model, loaded on first use."""
        if self._lm is None:
            s = self.spec
            if s["backend"] == "transformers":
                self._lm = LocalJudgeLM(
                    s["model"],
                    chat=s.get("chat", True),
                    top_logprobs=s.get("top_logprobs", 20),
                    batch_size=s.get("batch_size", 8),
                    trust_remote_code=s.get("trust_remote_code", False),
                )
            elif s["backend"] == "openai":
                o = dict(s.get("openai") or {})
                self._lm = OpenAIJudgeLM(
                    s.get("tokenizer") or s["model"],
                    top_logprobs=s.get("top_logprobs", 20),
                    logit_bias=o.pop("logit_bias", 100.0),
                    chat=s.get("chat", True),
                    served_model=o.pop("model", None) or s["model"],
                    trust_remote_code=s.get("trust_remote_code", False),
                    **o,
                )
            else:
                raise PipelineError(
                    f"{self.folder}: judge backend '{s['backend']}' is not one of {BACKENDS}"
                )
        return self._lm

    def template(self, mode: str) -> JudgeTemplate:
        if mode not in self.templates:
            raise PipelineError(
                f"{self.folder}: no {mode} template (config key 'evaluate.judge.templates.{mode}')"
            )
        return self.templates[mode]

    def _ask(self, mode: str, rows: list[dict]) -> list[Verdict]:
        if not rows:
            return []
        t = self.template(mode)
        return self.lm.verdicts([t.render(**r) for r in rows], t)

    def pointwise(self, questions: list[str], answers: list[str]) -> list[Verdict]:
        """P(Yes) to "is this answer good?" per (question, answer)."""
        n = self.max_field_chars
        rows = [
            {"question": _cut(q, n, keep_end=True), "answer": _cut(a, n)}
            for q, a in zip(questions, answers, strict=True)
        ]
        return self._ask("pointwise", rows)

    def pairwise(self, questions: list[str], first: list[str], second: list[str]) -> dict:
        """Each pair judged in both orders; :func:`pairwise_summary` plus both orders' verdicts."""
        n = self.max_field_chars
        q = [_cut(x, n, keep_end=True) for x in questions]
        a = [_cut(x, n) for x in first]
        b = [_cut(x, n) for x in second]
        ab = self._ask(
            "pairwise",
            [
                {"question": x, "answer_a": y, "answer_b": z}
                for x, y, z in zip(q, a, b, strict=True)
            ],
        )
        ba = self._ask(
            "pairwise",
            [
                {"question": x, "answer_a": z, "answer_b": y}
                for x, y, z in zip(q, a, b, strict=True)
            ],
        )
        summary = pairwise_summary(
            np.array([v.p_yes for v in ab], float), np.array([v.p_yes for v in ba], float)
        )
        return {**summary, "ab": ab, "ba": ba}

    def similarity(self, first: list[str], second: list[str]) -> list[Verdict]:
        """P(Yes) to "do these two sentences mean the same?"."""
        return self._ask(
            "similarity",
            [{"sentence1": x, "sentence2": y} for x, y in zip(first, second, strict=True)],
        )

    def score(self, texts: list[str]) -> np.ndarray:
        """Pointwise P(good) of dialogue texts; NaN where the judge gave no verdict."""
        if len(texts) == 0:
            self.last_verdicts = []
            return np.zeros(0)
        parts = [split_dialogue("" if t is None else str(t)) for t in texts]
        self.last_verdicts = self.pointwise([c for c, _ in parts], [a for _, a in parts])
        return np.array([v.p_yes for v in self.last_verdicts], dtype=np.float64)

    def close(self) -> None:
        if self._lm is not None:
            self._lm.close()
            self._lm = None


# ---------------------------------------------------------------- the judge folder


def _judge_card(spec: dict, tokens: dict | None) -> str:
    lines = [
        "# LLM judge",
        "",
        "Scores with P(Yes) / (P(Yes) + P(No)) of the judge's next token (docs/evaluation.md).",
        "",
        f"- Backend: `{spec['backend']}`; model: `{spec['model']}`; chat template: {spec['chat']}.",
        f"- A verdict needs a yes/no token among the {spec['top_logprobs']} most likely next "
        "tokens; otherwise the item has no score (NaN) and is counted.",
        "",
        "## Templates",
        "",
    ]
    for mode, t in spec["templates"].items():
        lines.append(
            f"- {mode}: `{t['path']}` ({t['name']} v{t['version']}, {t['lang']}); "
            f"yes {t['yes_words']}, no {t['no_words']}"
        )
    lines += ["", "## Yes/no tokens", ""]
    if tokens is None:
        lines.append("No local tokenizer: the server's tokens are matched to the words by string.")
    else:
        for mode, v in tokens.items():
            lines.append(
                f"- {mode}: yes tokens {sorted(v['yes'].values())}, no tokens "
                f"{sorted(v['no'].values())}; words scored as token sequences: "
                f"yes {len(v['yes_sequences'])}, no {len(v['no_sequences'])}"
            )
    lines += [
        "",
        "## Limits",
        "",
        "- A judge is only as good as its agreement with people: read "
        "`results/eval/evaluator_validation.md` before letting it drive a decision.",
        "- Pairwise judgements depend on the order of the answers (position bias); the pipeline "
        "always asks both orders and reports the flips.",
        "- A small model rarely ranks a yes/no token among its most likely next tokens: many "
        "items then have no verdict, which the validation reports as low coverage.",
        "",
    ]
    return "\n".join(lines)


def prepare_judge(
    output: str,
    *,
    model: str,
    templates: dict[str, str],
    backend: str = "transformers",
    chat: bool = True,
    top_logprobs: int = 20,
    batch_size: int = 8,
    max_field_chars: int | None = 1500,
    tokenizer: str | None = None,
    trust_remote_code: bool = False,
    openai: dict | None = None,
) -> dict:
    """Write the judge evaluator folder (evaluator.json, tokens.json, model_card.md).

    Args:
        output: folder to write (atomically).
        model: the judge model: a model folder (transformers backend, or the local
            tokenizer of a served one) or the name the server knows it by.
        templates: mode (pointwise, pairwise, similarity) -> template YAML path.
        backend: "transformers" or "openai".
        chat: apply the chat template to the judge prompt.
        top_logprobs: a verdict needs a yes/no token among this many most likely tokens.
        batch_size: prompts per forward pass (transformers).
        max_field_chars: a question or answer longer than this is cut (the question
            keeps its end: the latest turn).
        tokenizer: local tokenizer folder of a served model (openai backend), when
            ``model`` is not a folder.
        trust_remote_code: allow custom model code.
        openai: options of the openai backend (base_url, model: the served name,
            api_key_env, endpoint, timeout_s, max_retries, logit_bias).

    Returns:
        The evaluator spec written.

    Raises:
        DataError: a template file is bad or its mode does not match its key.
        PipelineError: unknown backend, or no template at all.
    """
    if backend not in BACKENDS:
        raise PipelineError(
            f"config key 'evaluate.judge.backend': '{backend}' is not one of {BACKENDS}"
        )
    if not templates:
        raise PipelineError("config key 'evaluate.judge.templates': no template")
    loaded = {}
    for mode, path in templates.items():
        t = load_template(path)
        if t.mode != mode:
            raise DataError(
                f"{path}: mode '{t.mode}', but it is configured as the {mode} template "
                f"(config key 'evaluate.judge.templates.{mode}')"
            )
        loaded[mode] = t
    spec = {
        "kind": "judge",
        "backend": backend,
        "model": str(model),
        "tokenizer": tokenizer,
        "chat": bool(chat),
        "top_logprobs": int(top_logprobs),
        "batch_size": int(batch_size),
        "max_field_chars": max_field_chars,
        "trust_remote_code": bool(trust_remote_code),
        "openai": dict(openai or {}) if backend == "openai" else None,
        "templates": {mode: t.to_dict() for mode, t in loaded.items()},
    }
    tok_path = tokenizer or model
    tokens = None
    # A local model (folder or hub id) always has its tokenizer here; a served one only
    # when it is a folder (or config evaluate.judge.tokenizer names one).
    if backend == "transformers" or Path(tok_path).is_dir():
        from domainllm.models.tokenizer import load_tokenizer

        try:
            tok = load_tokenizer(tok_path, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as e:
            raise DataError(
                f"config key 'evaluate.judge.model': cannot load a tokenizer from {tok_path}: {e}"
            ) from e
        tokens = {mode: token_variants(tok, t.yes, t.no) for mode, t in loaded.items()}
        for mode, v in tokens.items():
            log.info(
                "judge %s: yes tokens %s, no tokens %s, multi-token words %d/%d",
                mode,
                sorted(v["yes"].values()),
                sorted(v["no"].values()),
                len(v["yes_sequences"]),
                len(v["no_sequences"]),
            )
    with atomic_path(output, directory=True) as tmp:
        write_json(spec, tmp / "evaluator.json")
        if tokens is not None:
            write_json(
                {
                    m: {
                        "yes": {str(k): s for k, s in v["yes"].items()},
                        "no": {str(k): s for k, s in v["no"].items()},
                        "yes_sequences": v["yes_sequences"],
                        "no_sequences": v["no_sequences"],
                    }
                    for m, v in tokens.items()
                },
                tmp / "tokens.json",
            )
        write_text(_judge_card(spec, tokens), tmp / "model_card.md")
    return spec
