"""A model behind an OpenAI-compatible chat-completions endpoint, as a judge or as a model under test.

Requests go through the official `openai` SDK (`openai.OpenAI(...).chat.completions.create`): it retries
408/409/429/5xx answers, timeouts and connection errors with exponential backoff and jitter, and honours
Retry-After. What slimlab adds around it:

- the key: read from the environment variable the recipe names, at request time, into an SDK client built
  for that one call and dropped after it (the long-lived ChatClient holds only the key-free HTTP
  connection pool). It is never logged or written. With `api_key_env` None no Authorization header is sent
  at all, and nothing is taken from OPENAI_API_KEY, OPENAI_ORG_ID or OPENAI_PROJECT_ID either;
- errors: `APIError`, one line naming the URL, the HTTP status and a hint, scrubbed of the key and of every
  piece of it of 6+ characters (`scrub`); of a server's error body only its message field is kept, scrubbed,
  then cut to 300 characters;
- measurements: `ChatResult.latency_s` is the wall time of the whole call (every attempt and the SDK's
  backoff sleeps included), `ChatResult.attempts` the HTTP requests that call sent, counted exactly by an
  httpx event hook on the connection pool (per thread)."""

from __future__ import annotations

import json
import os
import re
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import openai

from evaluate.generation import DecodingConfig, Generation, truncate_at_stop
from evaluate.records import Backend, BatchProfile, Profile

MAX_STOP = 4  # the OpenAI API accepts at most four stop sequences
MIN_SECRET_FRAGMENT = 6  # scrub every piece of the key at least this long (a prefix cut by a length limit, ...)
MAX_ERROR_DETAIL = 300  # characters of a server's (scrubbed) error message kept in APIError
NO_KEY = "no-key-sent"  # the SDK insists on an api_key; with api_key_env None this stands in and is never sent
_SDK_INITIAL_BACKOFF_S = 0.5  # openai._constants.INITIAL_RETRY_DELAY: the first delay of the SDK's schedule


class APIError(RuntimeError):
    """A request that failed for good (after retries); the message never contains the API key."""


@dataclass(frozen=True)
class ChatResult:
    text: str
    latency_s: float  # wall time of the whole call: every attempt and the backoff between them, network included
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    attempts: int = 1  # HTTP requests sent for this call (1 + retries)


def scrub(text: str, secret: str | None) -> str:
    """`text` with the secret and every substring of it of MIN_SECRET_FRAGMENT+ characters replaced by ***.

    Each window of MIN_SECRET_FRAGMENT characters of `text` that occurs in the secret is masked; any piece of
    the secret of that length or more is a run of such windows, so it is masked whole, wherever it was cut.
    Over-masking (an innocent 6-character coincidence) is the accepted cost. A secret shorter than that is
    replaced where it occurs whole."""
    if not secret or not text:
        return text
    w = MIN_SECRET_FRAGMENT
    if len(secret) < w:
        return text.replace(secret, "***")
    grams = {secret[i:i + w] for i in range(len(secret) - w + 1)}
    masked = [False] * len(text)
    for i in range(len(text) - w + 1):
        if text[i:i + w] in grams:
            masked[i:i + w] = [True] * w
    out: list[str] = []
    for i, ch in enumerate(text):
        if not masked[i]:
            out.append(ch)
        elif i == 0 or not masked[i - 1]:
            out.append("***")
    return "".join(out)


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", "".join(ch if ch.isprintable() else " " for ch in text)).strip()


def error_detail(body: str, secret: str | None) -> str:
    """The short, filtered part of a server's error body that an APIError keeps: the JSON error message
    (`{"error": {"message": ...}}`, `{"error": "..."}`, `{"message": ...}` or `{"detail": "..."}`), else
    the start of a non-JSON body; scrubbed before it is cut, on one line, at most MAX_ERROR_DETAIL characters."""
    body = scrub(body, secret)
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        err = data.get("error")
        candidates = [err.get("message") if isinstance(err, dict) else err, data.get("message"), data.get("detail")]
        message = next((c for c in candidates if isinstance(c, str) and c.strip()), None)
        text = message if message is not None else "(JSON error body without a message)"
    else:
        text = body if body.strip() else "(empty body)"
    text = _one_line(scrub(text, secret))
    return text if len(text) <= MAX_ERROR_DETAIL else text[:MAX_ERROR_DETAIL - 3] + "..."


def _retryable(status: int) -> bool:
    """The statuses the SDK retries (openai._base_client._should_retry)."""
    return status in (408, 409, 429) or status >= 500


def _hint(code: int, env: str | None) -> str:
    if code in (401, 403):
        return f"; check the key in ${env}" if env else "; the server wants a key: set api_key_env"
    if code == 404:
        return "; base_url should end where /chat/completions follows (e.g. https://api.openai.com/v1)"
    return ""


class _OpenAI(openai.OpenAI):
    """openai.OpenAI with the SDK's own backoff schedule (exponential, jittered) rescaled so that it starts at
    `backoff_s` instead of 0.5 s and never waits more than `max_backoff_s`; a Retry-After the SDK honours is
    kept as is. Tests use 10 ms; the defaults (0.5 s, 8 s) are the SDK's schedule unchanged."""

    slimlab_backoff_s: float = _SDK_INITIAL_BACKOFF_S
    slimlab_max_backoff_s: float = 8.0

    def _calculate_retry_timeout(self, remaining_retries: int, options: Any, response_headers: Any = None) -> float:
        delay = super()._calculate_retry_timeout(remaining_retries, options, response_headers)
        retry_after = self._parse_retry_after_header(response_headers)
        if retry_after is not None and delay == retry_after:  # the server said how long: the SDK obeys
            return delay
        return min(delay * self.slimlab_backoff_s / _SDK_INITIAL_BACKOFF_S, self.slimlab_max_backoff_s)


@dataclass
class ChatClient:
    """POST {base_url}/chat/completions through the openai SDK; retries and backoff are the SDK's."""

    base_url: str
    model: str
    api_key_env: str | None = "OPENAI_API_KEY"  # None: send no Authorization header (local servers)
    timeout_s: float = 60.0
    max_retries: int = 4
    backoff_s: float = _SDK_INITIAL_BACKOFF_S  # first backoff delay (the SDK's schedule, rescaled)
    max_backoff_s: float = 8.0
    # the key-free connection pool shared by all calls and threads, and the per-thread request counter
    _http: Any = field(default=None, init=False, repr=False, compare=False)
    _tls: threading.local = field(default_factory=threading.local, init=False, repr=False, compare=False)
    _http_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).netloc

    def _key(self) -> str | None:
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise APIError(f"environment variable {self.api_key_env} is not set; export the API key there "
                           f"(slimlab reads it at request time and never writes it to disk)")
        return key

    def _count_request(self, request: Any) -> None:  # httpx event hook: runs in the calling thread
        self._tls.sent = getattr(self._tls, "sent", 0) + 1

    def _http_client(self) -> Any:
        with self._http_lock:
            if self._http is None:
                self._http = openai.DefaultHttpxClient(event_hooks={"request": [self._count_request]})
            return self._http

    def _sdk(self, key: str | None) -> _OpenAI:
        """An SDK client for one call: it holds the key, the caller drops it when the call returns."""
        sdk = _OpenAI(base_url=self.base_url, api_key=key if key is not None else NO_KEY, timeout=self.timeout_s,
                      max_retries=self.max_retries, http_client=self._http_client())
        sdk.slimlab_backoff_s, sdk.slimlab_max_backoff_s = self.backoff_s, self.max_backoff_s
        return sdk

    def close(self) -> None:
        """Close the connection pool (a later call opens a new one)."""
        with self._http_lock:
            if self._http is not None:
                self._http.close()
                self._http = None

    def chat(self, messages: list[dict[str, str]], *, max_tokens: int, temperature: float = 0.0,
             seed: int | None = None, stop: Sequence[str] = (), top_p: float | None = None) -> ChatResult:
        params: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": max_tokens,
                                  "temperature": temperature}
        if seed is not None:
            params["seed"] = seed
        if stop:
            params["stop"] = list(stop)[:MAX_STOP]
        if top_p is not None:
            params["top_p"] = top_p
        # Organization and project headers are omitted (the SDK would take them from the environment, not the
        # recipe), and so is Authorization when there is no key (the SDK's documented way to send none)
        omit: dict[str, Any] = {"OpenAI-Organization": openai.Omit(), "OpenAI-Project": openai.Omit()}
        key = self._key()
        if key is None:
            omit["Authorization"] = openai.Omit()
        self._tls.sent = 0
        message = ""
        t0 = time.perf_counter()
        try:
            completion = self._sdk(key).chat.completions.create(**params, extra_headers=omit)
            latency = time.perf_counter() - t0  # the SDK client (the only object that held the key) is gone
            return _chat_result(completion, latency, max(self._tls.sent, 1), key)
        except openai.APITimeoutError:
            message = (f"request to {self.url} timed out after {self.timeout_s:g} s ({self._tls.sent} attempts); "
                       f"raise timeout_s/max_retries or check the server")
        except openai.APIConnectionError as exc:
            reason = exc.__cause__ if exc.__cause__ is not None else exc
            message = (f"cannot reach {self.url}: {reason} ({self._tls.sent} attempts); "
                       f"raise timeout_s/max_retries or check the server")
        except openai.APIStatusError as exc:
            status = exc.status_code
            message = f"HTTP {status} from {self.url}: {error_detail(_body_text(exc), key)}"
            if _retryable(status):
                message += f" ({self._tls.sent} attempts); raise timeout_s/max_retries or check the server"
            else:
                message += _hint(status, self.api_key_env)
        except (openai.APIResponseValidationError, json.JSONDecodeError, _NotACompletion) as exc:
            cause = exc.__cause__ if isinstance(exc, _NotACompletion) and exc.__cause__ is not None else exc
            message = (f"{self.url} answered something that is not a chat completion: "
                       f"{type(cause).__name__}: {_one_line(scrub(str(cause), key))[:200]}")
        except openai.OpenAIError as exc:  # anything else the SDK raises (a client it cannot set up, ...)
            message = f"request to {self.url} failed: {type(exc).__name__}: {_one_line(scrub(str(exc), key))[:200]}"
        # raised outside the except blocks, so the SDK's exception (whose message holds the raw error body) is
        # not kept as __context__ either
        raise APIError(_one_line(scrub(message, key)))


class _NotACompletion(Exception):
    """A 200 answer without the fields of a chat completion (raised from the AttributeError & co. it caused)."""


def _chat_result(completion: Any, latency: float, attempts: int, key: str | None) -> ChatResult:
    try:
        choice = completion.choices[0]
        usage = completion.usage
        return ChatResult(text=scrub_whole(choice.message.content or "", key), latency_s=latency,
                          prompt_tokens=usage.prompt_tokens if usage else None,
                          completion_tokens=usage.completion_tokens if usage else None,
                          finish_reason=choice.finish_reason, attempts=attempts)
    except (AttributeError, IndexError, KeyError, TypeError) as exc:
        raise _NotACompletion(str(exc)) from exc


def scrub_whole(text: str, secret: str | None) -> str:
    """Completions are model output: only a whole echoed key is masked there (fragments could be words)."""
    return text.replace(secret, "***") if secret else text


def _body_text(exc: openai.APIStatusError) -> str:
    try:
        return exc.response.text[:65536]
    except Exception:  # a streamed body that was not read: nothing to show
        return ""


@dataclass
class APIModel:
    """A model under test served over HTTP: same frozen prompts (one user message each), same decoding."""

    name: str
    client: ChatClient
    max_concurrency: int = 4
    requests: list[ChatResult] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def backend(self) -> Backend:
        return Backend(format="api", kernels=[f"OpenAI-compatible API {self.client.model} @ {self.client.host}"],
                       device="remote")

    def _one(self, prompt: str, config: DecodingConfig) -> Generation:
        sampled = config.do_sample
        result = self.client.chat([{"role": "user", "content": prompt}], max_tokens=config.max_new_tokens,
                                  temperature=config.temperature if sampled else 0.0, seed=config.seed,
                                  stop=config.stop, top_p=config.top_p if sampled else None)
        with self._lock:
            self.requests.append(result)
        # the server may ignore `stop`; cut locally exactly as the local generate() does
        finish = "length" if result.finish_reason == "length" else "stop"
        return Generation(truncate_at_stop(result.text, config.stop), finish, result.completion_tokens or 0)

    def generate(self, prompts: Sequence[str], config: DecodingConfig,
                       on_batch: Callable[[list[int], list[Generation]], None] | None = None) -> list[Generation]:
        """Completions in order; `on_batch` is called per chunk of `batch_size` so finished work persists."""
        outputs: list[Generation] = [Generation("", "stop", 0)] * len(prompts)
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            for start in range(0, len(prompts), config.batch_size):
                idx = list(range(start, min(start + config.batch_size, len(prompts))))
                gens = list(pool.map(lambda i: self._one(prompts[i], config), idx))
                for i, g in zip(idx, gens, strict=True):
                    outputs[i] = g
                if on_batch is not None:
                    on_batch(idx, gens)
        return outputs

    def continuation_logprobs(self, pairs: Sequence[tuple[str, str]],
                              batch_size: int = 16) -> list[tuple[float, int]] | None:
        """A chat-completions API scores no given continuation: multiple choice keeps its generated-letter score."""
        return None

    def latency_profile(self) -> Profile:
        """Measured request latencies as a Profile record (batch 1 = one request). Each request's time is the
        wall time of its whole call (network, queueing, prefill, and the retries and backoff of retried
        requests, counted in retried_requests); no TTFT without streaming."""
        reqs = list(self.requests)
        ms = [1000 * r.latency_s for r in reqs]
        per_token = [1000 * r.latency_s / r.completion_tokens for r in reqs if r.completion_tokens]
        tokens = sum(r.completion_tokens or 0 for r in reqs)
        total_s = sum(r.latency_s for r in reqs)
        row = BatchProfile(batch_size=1, ttft_ms=None,
                           latency_ms_per_token=statistics.median(per_token) if per_token else None,
                           tokens_per_s=tokens / total_s if tokens and total_s else None, timer="request wall time")
        deciles = statistics.quantiles(ms, n=10, method="inclusive") if len(ms) > 1 else ms * 9
        return Profile(kind="api", backend=self.backend, batches=[row], n_requests=len(reqs),
                       max_concurrency=self.max_concurrency,
                       request_ms_p50=deciles[4] if ms else None, request_ms_p90=deciles[8] if ms else None,
                       retried_requests=sum(r.attempts > 1 for r in reqs),
                       prompt_tokens=sum(r.prompt_tokens or 0 for r in reqs), completion_tokens=tokens)


def client_from_spec(spec: Any) -> ChatClient:
    """A client from a recipe entry (judge or api_models item): base_url, model, api_key_env, timeouts."""
    return ChatClient(spec.base_url, spec.model, spec.api_key_env, spec.timeout_s, spec.max_retries)
