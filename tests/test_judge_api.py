"""LLM-as-judge and API models under test, against a real HTTP server on loopback (no mocked client)."""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import socket
import sqlite3
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from compress.recipe import RecipeError, load_recipe
from evaluate.api_model import MAX_ERROR_DETAIL, NO_KEY, APIError, APIModel, ChatClient, error_detail, scrub
from evaluate.generation import DecodingConfig, Generation
from evaluate.judge import JUDGE_METRICS, cohen_kappa, is_unsettled, judge_cell, judge_samples, parse_verdict
from evaluate.models import EMBEDDED_ROOT
from evaluate.records import Backend, CellMetrics, Profile
from evaluate.scoring import score_output
from evaluate.tasks import Item, load_builtin_tasks
from tests.conftest import KEY_ENV, write_recipe
from tests.fake_openai_server import ECHO_AT, JSON_HEAD, FakeOpenAI


@pytest.fixture
def server(api_key: str):
    with FakeOpenAI(api_key=api_key, lifetime_s=120, delay_s=1.0) as srv:
        yield srv


def client(server: FakeOpenAI, model: str = "calc", **kw) -> ChatClient:
    return ChatClient(server.base_url, model, KEY_ENV, **{"timeout_s": 5.0, "backoff_s": 0.01, **kw})


# ------------------------------------------------------------------------------ the chat client


def test_round_trip_sends_key_and_decoding(server, api_key):
    result = client(server).chat([{"role": "user", "content": "Question: What is 3 + 4?\nAnswer:"}],
                                 max_tokens=16, seed=7, stop=["\n"])
    assert result.text == "The answer is 7."
    assert result.completion_tokens == 4 and result.prompt_tokens == 7 and result.latency_s > 0
    (req,) = server.received
    assert req["auth_ok"] and req["status"] == 200
    assert req["body"] == {"model": "calc", "messages": [{"role": "user", "content": req["body"]["messages"][0][
        "content"]}], "max_tokens": 16, "temperature": 0.0, "seed": 7, "stop": ["\n"]}


def test_wrong_key_is_not_retried_and_not_echoed(server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-wrong-" + secrets.token_hex(8))
    with pytest.raises(APIError, match=rf"HTTP 401 .*check the key in \${KEY_ENV}") as info:
        client(server).chat([{"role": "user", "content": "1 + 1"}], max_tokens=4)
    assert "sk-wrong" not in str(info.value)
    assert server.count(status=401) == 1 and len(server.received) == 1


def test_missing_key_names_the_variable(server, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(APIError, match=f"environment variable {KEY_ENV} is not set"):
        client(server).chat([{"role": "user", "content": "1 + 1"}], max_tokens=4)
    assert server.received == []


def test_retries_on_429_and_5xx_then_succeeds(server):
    server.fail_next(429)
    server.fail_next(503)
    result = client(server).chat([{"role": "user", "content": "2 * 21"}], max_tokens=8)
    assert result.text == "The answer is 42." and result.attempts == 3
    assert [r["status"] for r in server.received] == [429, 503, 200]


def test_client_error_is_not_retried(server):
    server.fail_next(400)
    with pytest.raises(APIError, match=r"HTTP 400 .*injected failure 400"):
        client(server).chat([{"role": "user", "content": "2 * 21"}], max_tokens=8)
    assert len(server.received) == 1
    with pytest.raises(APIError, match=r"HTTP 404 .*does not exist"):
        client(server, model="gpt-nope").chat([{"role": "user", "content": "x"}], max_tokens=8)


def test_gives_up_after_max_retries(server):
    server.fail_next(500, times=3)
    with pytest.raises(APIError, match=r"HTTP 500 .* \(3 attempts\)"):
        client(server, max_retries=2).chat([{"role": "user", "content": "1 + 2"}], max_tokens=8)
    assert server.count(status=500) == 3


def test_timeout_error_is_clear(server):
    t0 = time.perf_counter()
    with pytest.raises(APIError, match=r"timed out after 0.2 s \(2 attempts\); raise timeout_s"):
        client(server, model="slow", timeout_s=0.2, max_retries=1).chat([{"role": "user", "content": "x"}],
                                                                          max_tokens=2)
    assert time.perf_counter() - t0 < 0.9  # two 0.2 s attempts, not the server's 1 s answer


def test_no_key_env_sends_no_authorization_and_nothing_from_the_environment(monkeypatch):
    sentinels = {name: f"sk-AMBIENT-{name}-" + secrets.token_hex(8)
                 for name in ("OPENAI_API_KEY", "OPENAI_ADMIN_KEY", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID")}
    for name, value in sentinels.items():
        monkeypatch.setenv(name, value)
    with FakeOpenAI(api_key=None, lifetime_s=60) as local:
        result = ChatClient(local.base_url, "calc", None, timeout_s=5.0).chat([{"role": "user", "content": "1 + 2"}],
                                                                             max_tokens=4)
        assert result.text == "The answer is 3." and result.attempts == 1
        (req,) = local.received
        assert not req["has_auth"]  # no key, and not OPENAI_API_KEY nor the placeholder either
        assert not [v for v in req["headers"].values() for s in [*sentinels.values(), NO_KEY] if s in v]


def test_key_env_sends_only_that_key(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-AMBIENT-" + secrets.token_hex(8))
    monkeypatch.setenv("OPENAI_ORG_ID", "org-AMBIENT")
    client(server).chat([{"role": "user", "content": "1 + 2"}], max_tokens=4)
    (req,) = server.received
    assert req["auth_ok"] and req["has_auth"]  # Authorization is exactly "Bearer <the $SLIMLAB_TEST_KEY key>"
    assert not [v for v in req["headers"].values() if "AMBIENT" in v]


def fragments(key: str, n: int = 6) -> list[str]:
    return [key[i:i + n] for i in range(len(key) - n + 1)]


@pytest.mark.parametrize("status", [400, 401, 403, 500])
@pytest.mark.parametrize("echo", ["json", "text"])
@pytest.mark.parametrize(("at", "cut"), [(ECHO_AT, None), (ECHO_AT - len(JSON_HEAD), None),  # crossing char 500
                                          (MAX_ERROR_DETAIL - 10, None), (20, None),  # crossing our cut; inside;
                                          (MAX_ERROR_DETAIL - 30, MAX_ERROR_DETAIL - 14)])
def test_key_echoed_in_a_long_error_body_never_reaches_the_message(server, api_key, status, echo, at, cut, caplog):
    # ... and cut by the server itself, leaving the key's first 16 characters inside what APIError keeps
    caplog.set_level(logging.DEBUG)
    server.fail_next(status, times=2, echo_auth=echo, echo_at=at, echo_cut=cut)
    with pytest.raises(APIError, match=rf"HTTP {status} from {server.base_url}/chat/completions: x+") as info:
        client(server, max_retries=1).chat([{"role": "user", "content": "1 + 1"}], max_tokens=4)
    message = str(info.value)
    assert not [f for f in fragments(api_key) if f in message], message
    assert "\n" not in message and len(message) < MAX_ERROR_DETAIL + 200
    assert info.value.__context__ is None and info.value.__cause__ is None  # the SDK's error (raw body) is not kept
    if at < MAX_ERROR_DETAIL:  # the key was inside the kept part: masked where it stood (a cut one too)
        assert "x" * at + "***" in message
    if at == 20:
        assert "x" * at + "*** (received Authorization: Bearer ***; request rejected" in message
    assert "received_headers" not in message  # of a JSON body only error.message is kept
    assert server.count(status=status) == (2 if status == 500 else 1)
    assert not [f for f in fragments(api_key) if f in caplog.text]


def test_scrub_masks_every_piece_of_the_key():
    key = "sk-FAKE-SECRET-1234567890abcdef"
    assert scrub(f"a {key} b", key) == "a *** b"
    assert scrub("body ...sk-FAKE-SECRET-1", key) == "body ...***"  # a prefix cut by a length limit
    assert scrub("x 567890abc y", key) == "x *** y" and scrub("cdef!", key) == "cdef!"  # 6+ masked, 4 kept
    assert scrub(f"{key[:10]}|{key[12:]}", key) == "***|***"
    assert scrub("nothing here", key) == "nothing here" and scrub("short abc", "abc") == "short ***"
    assert scrub("text", None) == "text"


def test_error_detail_keeps_only_the_scrubbed_message():
    key = "sk-FAKE-SECRET-1234567890abcdef"
    body = json.dumps({"error": {"message": "bad\nrequest " + key[:16], "debug": key, "type": "x"}})
    assert error_detail(body, key) == "bad request ***"
    assert error_detail(json.dumps({"detail": "Not Found"}), key) == "Not Found"
    assert error_detail(json.dumps({"error": "overloaded"}), key) == "overloaded"
    assert error_detail(json.dumps({"error": {"code": 5}}), key) == "(JSON error body without a message)"
    long = error_detail("<html>" + "z" * 1000 + key, key)
    assert len(long) == MAX_ERROR_DETAIL and long.endswith("...") and "sk-FAK" not in long
    assert error_detail("", key) == "(empty body)"


def test_not_a_chat_completion(server):
    with pytest.raises(APIError, match=r"/v1/chat/completions answered something that is not a chat completion: "):
        client(server, model="broken").chat([{"role": "user", "content": "x"}], max_tokens=2)
    assert len(server.received) == 1

def test_closed_port_fails_cleanly(api_key, caplog):
    caplog.set_level(logging.DEBUG)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    closed = ChatClient(f"http://127.0.0.1:{port}/v1", "calc", KEY_ENV, timeout_s=2.0, max_retries=1, backoff_s=0.01)
    with pytest.raises(APIError, match=rf"cannot reach http://127.0.0.1:{port}/v1/chat/completions: .* \(2 attempts\)"):
        closed.chat([{"role": "user", "content": "x"}], max_tokens=2)
    assert api_key not in caplog.text


def test_api_model_batches_in_order_with_concurrency(server):
    model = APIModel("gpt", client(server), max_concurrency=3)
    prompts = [f"Question: What is {i} + {i}?\nAnswer:" for i in range(7)]
    seen: list[list[int]] = []
    out = model.generate(prompts, DecodingConfig(max_new_tokens=8, batch_size=3, stop=(".",)),
                               on_batch=lambda idx, texts: seen.append(idx))
    assert [g.text for g in out] == [f"The answer is {2 * i}" for i in range(7)]  # cut locally at the stop string
    assert seen == [[0, 1, 2], [3, 4, 5], [6]]
    assert all(isinstance(g, Generation) and g.finish == "stop" and g.n_tokens == 4 for g in out)
    prof = model.latency_profile()
    assert isinstance(prof, Profile) and prof.kind == "api"
    assert prof.n_requests == 7 and prof.completion_tokens == 28 and prof.max_concurrency == 3
    assert prof.batches[0].latency_ms_per_token > 0 and prof.request_ms_p90 >= prof.request_ms_p50
    assert prof.batches[0].batch_size == 1 and prof.batches[0].ttft_ms is None
    assert prof.batches[0].timer == "request wall time" and prof.batches[0].tokens_per_s > 0
    assert prof.retried_requests == 0 and prof.prompt_tokens == sum(len(p.split()) for p in prompts)
    host = server.base_url.split("/")[2]
    assert model.backend == Backend(format="api", kernels=[f"OpenAI-compatible API calc @ {host}"], device="remote")
    assert prof.backend == model.backend and prof.device == "remote"
    Profile.model_validate(prof.model_dump())  # round-trips as the ledger stores it


def test_api_model_finish_length_and_retried_requests(server):
    model = APIModel("cut", client(server, model="cut"), max_concurrency=1)
    server.fail_next(503)
    out = model.generate(["a", "b"], DecodingConfig(max_new_tokens=3, batch_size=2))
    assert [(g.text, g.finish, g.n_tokens, g.truncated) for g in out] == [("The answer is", "length", 3, True)] * 2
    prof = model.latency_profile()
    assert prof.retried_requests == 1 and prof.n_requests == 2 and [r.attempts for r in model.requests] == [2, 1]
    assert model.requests[0].latency_s > 0  # the whole call, the failed attempt included


# ------------------------------------------------------------------------------------ the judge


def test_parse_verdict_and_kappa():
    assert parse_verdict("CORRECT") is True and parse_verdict("**Incorrect**.") is False
    assert parse_verdict("The answer is INCORRECT") is False and parse_verdict("correct or incorrect") is None
    assert parse_verdict("") is None and parse_verdict("maybe") is None
    assert cohen_kappa([True, True, False, False], [True, True, False, False]) == 1.0
    assert cohen_kappa([True, True, False, False], [True, False, True, False]) == 0.0
    assert cohen_kappa([True, True, True], [True, True, True]) is None  # chance agreement 1: undefined
    assert cohen_kappa([True, False, False, False], [False, True, True, True]) == pytest.approx(-0.6)  # -.375/.625


HAND_MADE = [  # (gold, output): rule verdict, fake judge verdict ("gold occurs in the output")
    ("7", "The answer is 7."),      # settled   rule T judge T
    ("12", "The answer is 12."),    # settled   rule T judge T
    ("7", "The answer is 17."),     # settled   rule F judge T  <- the judge's substring rule errs
    ("30", "The answer is 31."),    # settled   rule F judge F
    ("5", "The answer is 6."),      # settled   rule F judge F
    ("9", "maybe 9 apples"),        # unsettled (last_number) rule T judge T
    ("4", "no idea"),               # unsettled (none)        rule F judge F
    ("8", "8 minus 5 is 3"),        # unsettled (last_number) rule F judge T  <- overturned
]


def hand_made_samples() -> tuple[list[dict], list[Item]]:
    task = load_builtin_tasks()["synth_arith"]
    items = [Item(f"h{i}", f"Question: item {i}", gold) for i, (gold, _) in enumerate(HAND_MADE)]
    samples = [{"id": it.id, "repeat": 0, "output": out, "gold": it.gold, **score_output(task, it, out).as_dict()}
               for it, (_, out) in zip(items, HAND_MADE, strict=True)]
    return samples, items


def test_judge_runs_only_on_unsettled_items(server):
    samples, items = hand_made_samples()
    assert [is_unsettled(s) for s in samples] == [False] * 5 + [True] * 3
    metrics = judge_samples(samples, items, client(server, model="judge"), audit=0, seed=0)
    assert server.count("judge") == 3 == metrics["judge_calls"] == metrics["judge_unsettled"]
    assert [s.get("judge_verdict") for s in samples] == [None] * 5 + [True, False, True]
    assert metrics["accuracy_judged"] == 50.0  # a, b (rules) + f, h (judge) of 8; rules alone: 37.5
    assert metrics["judge_overturned"] == 1
    assert metrics["judge_agreement"] is None and metrics["judge_kappa"] is None


def test_audit_agreement_and_kappa(server):
    samples, items = hand_made_samples()
    metrics = judge_samples(samples, items, client(server, model="judge"), audit=10, seed=0)
    assert metrics["judge_calls"] == 8 == server.count("judge") and metrics["judge_audited"] == 5
    assert metrics["judge_agreement"] == pytest.approx(0.8)  # 4 of 5 settled items agree
    # p_o 0.8; rule says correct 2/5, judge 3/5: p_e = .4*.6 + .6*.4 = .48; kappa = .32/.52
    assert metrics["judge_kappa"] == pytest.approx(0.32 / 0.52)
    assert metrics["accuracy_judged"] == 50.0  # audits measure agreement, they never change verdicts
    again, _ = hand_made_samples()
    judge_samples(again, items, client(server, model="judge"), audit=2, seed=3)
    audited = [s["id"] for s in again if s.get("judge_role") == "audit"]
    assert len(audited) == 2 and all(not is_unsettled(s) for s in again if s["id"] in audited)


def test_judge_cell_metrics_are_cell_metrics_fields(server):
    samples, items = hand_made_samples()
    spec = SimpleNamespace(base_url=server.base_url, model="judge", api_key_env=KEY_ENV, timeout_s=5.0, max_retries=1,
                           audit=2, max_tokens=8, max_concurrency=2, tasks="all")
    metrics = judge_cell(spec, samples, items, seed=0)
    assert set(metrics) == set(JUDGE_METRICS) - {"judge_error"}
    assert set(metrics) <= set(CellMetrics.model_fields)
    merged = CellMetrics(n=8, accuracy=37.5).merged(metrics)
    assert merged.judge_calls == 5 and merged.accuracy_judged == 50.0 and merged.judge_audited == 2


# ------------------------------------------------------------------------------------ the recipe

RECIPE = """\
model: {{name: {model}}}
tasks:
  - {{name: synth_arith, n: 4}}
{extra}"""


def recipe_errors(tmp_path: Path, model: Path, extra: str) -> list:
    with pytest.raises(RecipeError) as info:
        load_recipe(write_recipe(tmp_path, RECIPE.format(model=model, extra=extra)))
    return info.value.issues


def test_validation_bad_url_missing_key_and_clashes(tmp_path, config_only_model, monkeypatch, api_key):
    (issue,) = recipe_errors(tmp_path, config_only_model, "judge: {base_url: api.openai.com/v1, model: gpt}\n")
    assert issue.loc == ("judge", "base_url") and issue.value == "api.openai.com/v1" and issue.line == 4
    assert "http:// or https://" in issue.message
    (issue,) = recipe_errors(tmp_path, config_only_model, "judge: {base_url: 'https://u:pw@h/v1', model: gpt}\n")
    assert issue.loc == ("judge", "base_url") and "must not carry credentials" in issue.message
    monkeypatch.delenv("SLIMLAB_NO_SUCH_KEY", raising=False)
    extra = ("api_models:\n  - {name: baseline, base_url: 'http://127.0.0.1:9/v1', model: m, "
             f"api_key_env: {KEY_ENV}}}\n"
             "  - {name: gpt, base_url: 'https://example.invalid/v1', model: m, api_key_env: SLIMLAB_NO_SUCH_KEY}\n"
             f"judge: {{base_url: 'http://127.0.0.1:9/v1', model: j, api_key_env: {KEY_ENV}, tasks: [synth_arit]}}\n")
    issues = {i.loc: i for i in recipe_errors(tmp_path, config_only_model, extra)}
    assert set(issues) == {("api_models", 0, "name"), ("api_models", 1, "api_key_env"), ("judge", "tasks", 0)}
    missing = issues[("api_models", 1, "api_key_env")]
    assert missing.value == "SLIMLAB_NO_SUCH_KEY" and "is not set" in missing.message and missing.line == 6
    assert "clashes" in issues[("api_models", 0, "name")].message
    assert "did you mean 'synth_arith'" in issues[("judge", "tasks", 0)].message
    ok = load_recipe(write_recipe(tmp_path, RECIPE.format(model=config_only_model, extra=extra.replace(
        "baseline", "gpt-a").replace("SLIMLAB_NO_SUCH_KEY", "null").replace("synth_arit]", "synth_arith]"))))
    assert ok.api_models[1].api_key_env is None and ok.judge.tasks == ["synth_arith"]
    assert api_key not in json.dumps(ok.model_dump())


# ------------------------------------------------------------------------------- a whole study


def tiny_model() -> str:
    assert (EMBEDDED_ROOT / "tiny-reasoner" / "config.json").exists(), "the embedded model ships with the repo"
    return "embedded:tiny-reasoner"


def sloppy_style(prompt: str) -> int:  # which answer format the fake "calc-sloppy" model uses
    return int(hashlib.sha1(prompt.encode()).hexdigest(), 16) % 4


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_study_with_api_model_and_judge_leaks_no_key(tmp_path, server, api_key, caplog, capsys):
    from compress.runner import run_study
    from evaluate.ledger import Ledger

    caplog.set_level(logging.DEBUG)
    out = tmp_path / "study"
    text = f"""\
model: {{name: {tiny_model()}}}
tasks:
  - {{name: synth_arith, n: 12, max_new_tokens: 12}}
decoding: {{batch_size: 6}}
profile: {{enabled: false}}
api_models:
  - {{name: gpt-calc, base_url: '{server.base_url}', model: calc-sloppy, api_key_env: {KEY_ENV}, max_concurrency: 3}}
judge: {{base_url: '{server.base_url}', model: judge, api_key_env: {KEY_ENV}, audit: 2}}
output: {out}
"""
    recipe = load_recipe(write_recipe(tmp_path, text))
    results = json.loads(run_study(recipe).read_text())

    rows = {r["variant"]: r for r in results}
    assert set(rows) == {"baseline", "gpt-calc"}
    api = rows["gpt-calc"]
    host = server.base_url.split("/")[2]
    backend = Backend(format="api", kernels=[f"OpenAI-compatible API calc-sloppy @ {host}"], device="remote")
    assert api["status"] == "ok" and api["backend"] == backend.describe()  # "...; remote"
    assert api["steps"] == "api:calc-sloppy"
    assert api["weight_bytes"] is None and api["disk_bytes"] is None and api["peak_memory_bytes"] is None
    assert api["latency_ms_per_token"] > 0 and api["tokens_per_s"] > 0 and api["ttft_ms"] is None

    prompts = [r["prompt"] for r in read_jsonl(out / "prompts" / "synth_arith.jsonl")]
    styles = [sloppy_style(p) for p in prompts]
    assert server.count("calc-sloppy") == 12
    assert api["value"] == pytest.approx(100 * styles.count(0) / 12)  # only "The answer is N." is right
    cells = {c.variant: c.metrics for c in Ledger(out / "results.sqlite").cells()}  # CellRecord
    judged_calls = 0
    for variant, cell in cells.items():
        samples = read_jsonl(out / "samples" / variant / "synth_arith.jsonl")
        unsettled = [s for s in samples if is_unsettled(s)]
        assert {s["id"] for s in samples if s.get("judge_role") == "unsettled"} == {s["id"] for s in unsettled}
        assert sum(s.get("judge_role") == "audit" for s in samples) == min(2, 12 - len(unsettled))
        assert cell.judge_calls == len(unsettled) + cell.judge_audited
        final = [s["judge_verdict"] if s.get("judge_role") == "unsettled" else s["correct"] for s in samples]
        assert cell.accuracy_judged == pytest.approx(100 * sum(final) / 12)
        judged_calls += cell.judge_calls
    assert server.count("judge") == judged_calls
    # the judge reads "I think N are left, not N+1" as right (the rules took the last number, N+1)
    assert cells["gpt-calc"].accuracy_judged == pytest.approx(100 * (styles.count(0) + styles.count(1)) / 12)
    assert cells["gpt-calc"].judge_overturned == styles.count(1)
    assert cells["gpt-calc"].judge_agreement is not None

    # a rerun recomputes nothing; a changed judge setting re-judges without regenerating
    before = len(server.received)
    run_study(recipe)
    assert len(server.received) == before
    recipe.judge.audit = 3
    run_study(recipe)
    assert server.count("calc-sloppy") == 12 and server.count("judge") > judged_calls
    for cell in (c.metrics for c in Ledger(out / "results.sqlite").cells()):
        assert cell.judge_audited == min(3, 12 - cell.judge_unsettled)

    # the key is in no file of the study (the ledger holds the variable's name only), nor in any log
    needle = api_key.encode()
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) > 5 and not [p for p in files if needle in p.read_bytes()]
    assert KEY_ENV.encode() in (out / "results.sqlite").read_bytes()
    with sqlite3.connect(out / "results.sqlite") as db:
        assert api_key not in json.dumps(db.execute("SELECT * FROM runs").fetchall())
    captured = capsys.readouterr()
    assert api_key not in caplog.text + captured.out + captured.err


@pytest.fixture
def finding_key(monkeypatch: pytest.MonkeyPatch) -> str:
    key = "sk-FAKE-SECRET-" + secrets.token_hex(16)  # as in the finding; no "test-" (pytest's paths have that)
    monkeypatch.setenv(KEY_ENV, key)
    return key


@pytest.mark.slow
def test_study_against_a_server_echoing_the_key_stores_no_piece_of_it(tmp_path, finding_key, caplog, capsys):
    """The reliability finding: an error body echoing the key across its 500th character left the key's first
    16 characters in results.sqlite, results.json, report.md, report.html and the console."""
    from compress.runner import run_study

    caplog.set_level(logging.DEBUG)
    out = tmp_path / "study"
    with FakeOpenAI(api_key=finding_key, lifetime_s=120) as server:
        # every request, the API model's and the judge's: the key crosses the body's 500th character
        server.fail_next(400, times=10_000, echo_auth="json", echo_at=ECHO_AT - len(JSON_HEAD))
        text = f"""\
model: {{name: {tiny_model()}}}
tasks:
  - {{name: synth_arith, n: 4, max_new_tokens: 12}}
profile: {{enabled: false}}
api_models:
  - {{name: gpt-calc, base_url: '{server.base_url}', model: calc, api_key_env: {KEY_ENV}, max_retries: 0}}
judge: {{base_url: '{server.base_url}', model: judge, api_key_env: {KEY_ENV}, max_retries: 0}}
output: {out}
"""
        results = json.loads(run_study(load_recipe(write_recipe(tmp_path, text))).read_text())
        assert server.count(status=400) >= 2  # the API model and the judge both met the leaky server
    rows = {r["variant"]: r for r in results}
    assert rows["gpt-calc"]["status"] == "failed" and "HTTP 400 from" in rows["gpt-calc"]["reason"]
    pieces = [f.encode() for f in fragments(finding_key)]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) > 3 and not [(p.name, f) for p in files for f in pieces if f in p.read_bytes()]
    captured = capsys.readouterr()
    console = caplog.text + captured.out + captured.err
    assert "HTTP 400 from" in console and not [f for f in fragments(finding_key) if f in console]
