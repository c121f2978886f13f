"""A real OpenAI-compatible HTTP server on 127.0.0.1 (ephemeral port) for tests: no mocked client.

Deterministic models behind POST /v1/chat/completions:
- "judge": answers CORRECT iff the reference answer string occurs in the model output, else INCORRECT;
- "calc": solves the arithmetic in the prompt (synth_arith word problems, or "a + b") -> "The answer is N.";
- "calc-sloppy": the same solution in one of four formats picked by a hash of the prompt: the answer-is
  format, prose whose last number is not the answer ("I think 7 are left, not 8": the rules guess 8, the
  judge sees 7), no number at all, or a wrong answer-is (off by one);
- "slow": sleeps `delay_s` first (to exercise timeouts).
- "broken": answers 200 with a body that has no choices;
- "cut": answers "The answer is" with finish_reason "length" (a completion cut by max_tokens).
It checks `Authorization: Bearer <api_key>`, can be told to fail the next requests (`fail_next`), optionally
echoing the Authorization header it got in a long error body (`echo_auth`: a leaky server), records what it
received (not the key: only whether an Authorization header came and matched), and shuts itself down after
`lifetime_s` at the latest."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_START = re.compile(r"(?:has|had|starts with|owns) (\d+)")
_OPS = re.compile(r"(?:buys|finds|gets|receives|picks up) (\d+) more|(?:gives away|loses|sells|uses) (\d+)"
                  r"|gives (\d+) to|(doubles)|(triples)")
_EXPR = re.compile(r"(-?\d+)\s*([-+*x])\s*(-?\d+)")


def solve(prompt: str) -> int | None:
    """The answer to the last question of a prompt: a synth_arith word problem or 'a op b'."""
    question = prompt.rsplit("Question:", 1)[-1].split("\nAnswer:")[0]
    if start := _START.search(question):
        value = int(start.group(1))
        for m in _OPS.finditer(question, start.end()):
            add, sub, give, double, triple = m.groups()
            value = (value + int(add) if add else value - int(sub or give) if (sub or give)
                     else value * 2 if double else value * 3 if triple else value)
        return value
    if expr := _EXPR.search(question):
        a, op, b = int(expr.group(1)), expr.group(2), int(expr.group(3))
        return a + b if op == "+" else a - b if op == "-" else a * b
    return None


def judge_answer(content: str) -> str:
    reference = re.search(r"Reference answer: (.*)", content)
    output = re.search(r"Model output:\n(.*?)\n\nDoes the model output", content, re.DOTALL)
    if not reference or not output:
        return "I cannot tell."
    return "CORRECT" if reference.group(1).strip() in output.group(1) else "INCORRECT"


def calc_answer(content: str, sloppy: bool) -> str:
    value = solve(content)
    if value is None:
        return "I do not know."
    if not sloppy:
        return f"The answer is {value}."
    style = int(hashlib.sha1(content.encode()).hexdigest(), 16) % 4
    return [f"The answer is {value}.", f"I think {value} are left, not {value + 1}", "Lots of them.",
            f"The answer is {value + 1}."][style]


ECHO_AT = 490  # where an echoed key starts in the error text by default: it crosses character 500
JSON_HEAD = '{"error": {"message": "'  # what precedes the error text in a JSON error body


def echo_body(status: int, authorization: str, at: int, cut: int | None, as_json: bool) -> str:
    """An error body (serialized) whose error text echoes the Authorization header, its key starting at
    character `at`, with more text after it unless the text is cut after `cut` characters; as JSON the text
    is error.message, and the header is echoed in another field as well."""
    key = authorization.removeprefix("Bearer ")
    message = "x" * at + key + f" (received Authorization: {authorization}; request rejected, status {status})"
    message = message[:cut]
    if not as_json:
        return message
    body = json.dumps({"error": {"message": message, "received_headers": {"authorization": authorization}}})
    assert body.startswith(JSON_HEAD + "x" * at)  # the key starts at character at + len(JSON_HEAD) of the body
    return body


class FakeOpenAI:
    def __init__(self, api_key: str | None = None, lifetime_s: float = 120.0, delay_s: float = 1.0) -> None:
        self.api_key = api_key
        self.delay_s = delay_s
        self.received: list[dict[str, Any]] = []
        self._failures: list[tuple[int, str | None, int, int | None]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._timer = threading.Timer(lifetime_s, self.stop)
        self._timer.daemon = True
        self._stopped = False

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def fail_next(self, status: int = 429, times: int = 1, echo_auth: str | None = None,
                  echo_at: int = ECHO_AT, echo_cut: int | None = None) -> None:
        """Fail the next `times` requests with `status`. echo_auth "json" or "text": the error text (the JSON
        error.message, or a plain-text body) echoes the request's Authorization header, its key starting at
        character `echo_at` (by default crossing the 500th), as a misbehaving proxy or server might; echo_cut:
        the server cuts that text after so many characters itself (leaving a piece of the key)."""
        assert echo_auth in (None, "json", "text")
        with self._lock:
            self._failures.extend([(status, echo_auth, echo_at, echo_cut)] * times)

    def count(self, model: str | None = None, status: int | None = 200) -> int:
        with self._lock:
            return sum((model is None or r["model"] == model) and (status is None or r["status"] == status)
                       for r in self.received)

    def start(self) -> FakeOpenAI:
        self._thread.start()
        self._timer.start()
        return self

    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._timer.cancel()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _respond(self, body: dict, auth_ok: bool, authorization: str) -> tuple[int, dict | str]:
        with self._lock:
            failure, echo, echo_at, echo_cut = self._failures.pop(0) if self._failures else (None, None, 0, None)
        if not auth_ok:
            return 401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}}
        if failure is not None and echo is not None:
            return failure, echo_body(failure, authorization, echo_at, echo_cut, as_json=echo == "json")
        if failure is not None:
            return failure, {"error": {"message": f"injected failure {failure}"}}
        model = body.get("model")
        finish = "stop"
        content = body["messages"][-1]["content"]
        if model == "judge":
            text = judge_answer(content)
        elif model in ("calc", "calc-sloppy"):
            text = calc_answer(content, sloppy=model == "calc-sloppy")
        elif model == "slow":
            time.sleep(self.delay_s)
            text = "ok"
        elif model == "cut":  # hits max_tokens: finish_reason "length"
            text, finish = "The answer is", "length"
        elif model == "broken":  # 200, but no choices
            return 200, {"id": "chatcmpl-fake", "object": "chat.completion"}
        else:
            return 404, {"error": {"message": f"The model {model!r} does not exist"}}
        usage = {"prompt_tokens": len(content.split()), "completion_tokens": len(text.split())}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return 200, {"id": "chatcmpl-fake", "object": "chat.completion", "model": model,
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                  "finish_reason": finish}], "usage": usage}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                if self.path != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                authorization = self.headers.get("Authorization")
                auth_ok = fake.api_key is None or authorization == f"Bearer {fake.api_key}"
                status, payload = fake._respond(body, auth_ok, authorization or "")
                headers = {k.lower(): v for k, v in self.headers.items() if k.lower() != "authorization"}
                with fake._lock:
                    fake.received.append({"model": body.get("model"), "status": status, "auth_ok": auth_ok,
                                          "has_auth": authorization is not None, "headers": headers,
                                          "body": body})
                self._send(status, payload)

            def _send(self, status: int, payload: dict | str) -> None:
                text = payload if isinstance(payload, str) else json.dumps(payload)
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain" if isinstance(payload, str) else "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
                pass

        return Handler
