"""A model behind an OpenAI-compatible chat-completions endpoint, as a judge or as a model under test.

Written on the stdlib (urllib) rather than the `openai` SDK: the SDK is not a dependency, and what
slimlab needs is one POST with retries, a timeout and measured latency. The API key is read from the
environment variable the recipe names at request time and is never stored on an object, logged or
written anywhere; error messages are scrubbed of it as well."""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from evaluate.generation import DecodingConfig, Generation, truncate_at_stop

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
MAX_STOP = 4  # the OpenAI API accepts at most four stop sequences


class APIError(RuntimeError):
    """A request that failed for good (after retries); the message never contains the API key."""


@dataclass(frozen=True)
class ChatResult:
    text: str
    latency_s: float  # wall time of the successful attempt, network included
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    attempts: int = 1


@dataclass
class ChatClient:
    """POST {base_url}/chat/completions with retries on 429/5xx/timeouts and exponential backoff."""

    base_url: str
    model: str
    api_key_env: str | None = "OPENAI_API_KEY"  # None: send no Authorization header (local servers)
    timeout_s: float = 60.0
    max_retries: int = 4
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0

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

    def _scrub(self, text: str) -> str:
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        return text.replace(key, "***") if key else text

    def chat(self, messages: list[dict[str, str]], *, max_tokens: int, temperature: float = 0.0,
             seed: int | None = None, stop: Sequence[str] = (), top_p: float | None = None) -> ChatResult:
        body: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": max_tokens,
                                "temperature": temperature}
        if seed is not None:
            body["seed"] = seed
        if stop:
            body["stop"] = list(stop)[:MAX_STOP]
        if top_p is not None:
            body["top_p"] = top_p
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = self._key()
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        last = ""
        for attempt in range(self.max_retries + 1):
            delay = min(self.max_backoff_s, self.backoff_s * 2**attempt)
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            t0 = time.perf_counter()
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    payload = json.loads(response.read())
                latency = time.perf_counter() - t0
                return _chat_result(payload, latency, attempt + 1)
            except urllib.error.HTTPError as exc:
                detail = self._scrub(exc.read(500).decode("utf-8", "replace"))
                last = f"HTTP {exc.code} from {self.url}: {detail}"
                if exc.code not in RETRY_STATUS:
                    raise APIError(last + _hint(exc.code, self.api_key_env)) from None
                delay = _retry_after(exc.headers.get("Retry-After"), delay, self.max_backoff_s)
            except (TimeoutError, urllib.error.URLError, ConnectionError) as exc:
                reason = getattr(exc, "reason", exc)
                if isinstance(reason, TimeoutError):
                    last = f"request to {self.url} timed out after {self.timeout_s:g} s"
                else:
                    last = f"cannot reach {self.url}: {self._scrub(str(reason))}"
            except (json.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
                raise APIError(f"{self.url} answered something that is not a chat completion: "
                               f"{type(exc).__name__}: {self._scrub(str(exc))[:200]}") from None
            if attempt < self.max_retries:
                time.sleep(delay)
        raise APIError(f"{last} ({self.max_retries + 1} attempts); raise timeout_s/max_retries or check the server")


def _chat_result(payload: dict, latency: float, attempts: int) -> ChatResult:
    choice = payload["choices"][0]
    usage = payload.get("usage") or {}
    return ChatResult(text=choice["message"].get("content") or "", latency_s=latency,
                      prompt_tokens=usage.get("prompt_tokens"), completion_tokens=usage.get("completion_tokens"),
                      finish_reason=choice.get("finish_reason"), attempts=attempts)


def _retry_after(header: str | None, default: float, cap: float) -> float:
    try:
        return min(cap, max(0.0, float(header))) if header is not None else default
    except ValueError:  # an HTTP date: fall back to our own backoff
        return default


def _hint(code: int, env: str | None) -> str:
    if code in (401, 403):
        return f"; check the key in ${env}" if env else "; the server wants a key: set api_key_env"
    if code == 404:
        return "; base_url should end where /chat/completions follows (e.g. https://api.openai.com/v1)"
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
    def backend(self) -> str:
        return f"OpenAI-compatible API {self.client.model} @ {self.client.host}"

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

    def generate_texts(self, prompts: Sequence[str], config: DecodingConfig,
                       on_batch: Callable[[list[int], list[Generation]], None] | None = None) -> list[Generation]:
        """Completions in order; `on_batch` is called per chunk of `batch_size` so finished work persists."""
        outputs: list[Generation] = [Generation("", "stop", 0)] * len(prompts)
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            for start in range(0, len(prompts), config.batch_size):
                idx = list(range(start, min(start + config.batch_size, len(prompts))))
                texts = list(pool.map(lambda i: self._one(prompts[i], config), idx))
                for i, t in zip(idx, texts, strict=True):
                    outputs[i] = t
                if on_batch is not None:
                    on_batch(idx, texts)
        return outputs

    def latency_profile(self) -> dict[str, Any]:
        """Measured request latencies in the shape of the local profile rows (batch 1 = one request).
        End-to-end per request (network, queueing and prefill included); no TTFT without streaming."""
        reqs = list(self.requests)
        ms = [1000 * r.latency_s for r in reqs]
        per_token = [1000 * r.latency_s / r.completion_tokens for r in reqs if r.completion_tokens]
        tokens = sum(r.completion_tokens or 0 for r in reqs)
        total_s = sum(r.latency_s for r in reqs)
        row = {"batch_size": 1, "ttft_ms": None,
               "latency_ms_per_token": statistics.median(per_token) if per_token else None,
               "tokens_per_s": tokens / total_s if tokens and total_s else None}
        quantiles = statistics.quantiles(ms, n=10, method="inclusive") if len(ms) > 1 else ms * 9
        return {"kind": "api", "backend": self.backend, "device": "remote", "batches": [row],
                "n_requests": len(reqs), "max_concurrency": self.max_concurrency,
                "request_ms_p50": statistics.median(ms) if ms else None,
                "request_ms_p90": quantiles[8] if ms else None,
                "retried_requests": sum(r.attempts > 1 for r in reqs),
                "prompt_tokens": sum(r.prompt_tokens or 0 for r in reqs), "completion_tokens": tokens}


def client_from_spec(spec: Any) -> ChatClient:
    """A client from a recipe entry (judge or api_models item): base_url, model, api_key_env, timeouts."""
    return ChatClient(spec.base_url, spec.model, spec.api_key_env, spec.timeout_s, spec.max_retries)
