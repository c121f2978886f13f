"""The Ray executor: the same study on a local Ray cluster gives the local executor's results item for item;
on two nodes (`ray start --head` + `ray start --address`) variants land where their resources are and the
ledger is whole; a worker killed mid-variant fails that variant alone and the rerun completes it; bad input
(an unreachable address, resources no node has) is a clear error before any model loads."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from compress.recipe import ResourcesSpec, load_recipe
from evaluate.ledger import JournaledLedger, Ledger
from evaluate.records import CellMetrics

ray = pytest.importorskip("ray")
from compress.ray_executor import (  # noqa: E402 - only with Ray installed
    RayExecutor,
    RayExecutorError,
    _check_address,
    missing_resources,
    task_options,
)

RECIPE = """\
name: ray
model: {{name: "embedded:tiny-reasoner"}}
resources: {{num_cpus: 1}}
variants:
  - {{name: rtn8, steps: [{{method: rtn, bits: 8, group_size: -1}}]{rtn8}}}
  - {{name: rtn4, steps: [{{method: rtn, bits: 4, group_size: 32}}]{rtn4}}}
tasks:
  - {{name: sort8_positive, n: 8}}
  - {{name: synth_mc, n: 8}}
decoding: {{batch_size: 8}}
profile: {{prompt_tokens: 16, new_tokens: 4, repeats: 1, warmup: 0}}
"""


def _recipe(tmp_path: Path, rtn8: str = "", rtn4: str = "", name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(RECIPE.format(rtn8=rtn8, rtn4=rtn4))
    return path


def _rows(out: Path) -> dict:
    return {(r["variant"], r["task"]): (r["value"], r["n"]) for r in json.loads((out / "results.json").read_text())}


def _samples(out: Path) -> dict:
    return {p.relative_to(out).as_posix(): p.read_text() for p in sorted((out / "samples").rglob("*.jsonl"))}


def _compress(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "compress"), *args]


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}


# fast: the pieces -----------------------------------------------------------------------------------------
def test_resources_no_node_has_are_named_with_the_most_any_node_has():
    nodes = [{"CPU": 2.0, "profile_slot": 1.0}, {"CPU": 8.0, "GPU": 1.0}]
    assert missing_resources({"CPU": 2.0}, nodes) is None
    assert missing_resources({"CPU": 4.0, "GPU": 1.0}, nodes) is None
    assert missing_resources({"GPU": 2.0}, nodes) == "GPU=2 (the most any node has: 1)"
    assert missing_resources({"CPU": 1.0, "node_b": 1.0}, nodes) == "node_b=1 (the most any node has: 0)"
    # each resource exists somewhere, but never together on one node
    assert "together on one node" in missing_resources({"GPU": 1.0, "profile_slot": 1.0}, nodes)


def test_task_options_follow_the_recipe_variant_over_study():
    study = ResourcesSpec(num_cpus=2, memory="1GiB", custom={"a": 1})
    mine = ResourcesSpec(num_gpus=1, custom={"b": 2}).over(study)
    assert task_options(mine) == {"num_cpus": 2.0, "num_gpus": 1.0, "memory": 2**30, "resources": {"a": 1, "b": 2}}
    assert task_options(ResourcesSpec()) == {"num_cpus": 1.0}


def test_an_unreachable_address_fails_at_once_naming_it():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(RayExecutorError, match=rf"127.0.0.1:{port}.*no Ray head answers.*ray start --head"):
        _check_address(f"127.0.0.1:{port}")
    assert time.monotonic() - t0 < 10
    with pytest.raises(RayExecutorError, match="not HOST:PORT"):
        _check_address("head-node")


def test_cli_unreachable_address_is_bad_input_before_any_model_loads(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run(_compress("run", str(_recipe(tmp_path)), "--out", str(tmp_path / "out"), "--executor", "ray",
                                    "--address", f"127.0.0.1:{port}"), capture_output=True, text=True, env=_env(),
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert f"127.0.0.1:{port}" in proc.stderr and "Traceback" not in proc.stderr
    assert Ledger(tmp_path / "out" / "results.sqlite").runs() == []  # refused before the run started
    proc = subprocess.run(_compress("run", str(_recipe(tmp_path)), "--out", str(tmp_path / "out"), "--address", "x:1"),
                          capture_output=True, text=True, env=_env(), timeout=120)
    assert proc.returncode == 2 and "--executor ray" in proc.stderr


def test_a_journaled_ledger_seeds_from_a_snapshot_and_sends_only_new_writes(tmp_path):
    ledger = Ledger(tmp_path / "l.sqlite")
    ledger.upsert_variant("v", "k", position=1, status="ok", steps=[{"method": "rtn"}])
    ledger.put_cell("v", "c", "task", "ck", CellMetrics(accuracy=50.0, n=4))
    sent = []
    copy = JournaledLedger(sent.append, ledger.snapshot("v"))
    assert sent == [] and copy.cell("v", "c", "ck").accuracy == 50.0 and copy.variant("v").position == 1
    copy.put_cell("v", "c2", "task", "ck2", CellMetrics(accuracy=25.0, n=4))
    copy.add_computed(7, "v/c2")
    assert [w.method for w in sent] == ["put_cell", "add_computed"]
    for write in sent[:1]:  # the driver applies them to the real ledger
        write.apply(ledger)
    assert ledger.cell("v", "c2", "ck2").accuracy == 25.0 and ledger.cell("v", "c", "ck").accuracy == 50.0


# slow: real clusters ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_local_ray_cluster_gives_the_local_executors_results_item_for_item(tmp_path):
    from compress.runner import run_study

    recipe = load_recipe(_recipe(tmp_path))
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    run_study(recipe, local)
    run_study(recipe, on_ray, executor=RayExecutor(num_cpus=2, dashboard=False))
    assert _rows(local) == _rows(on_ray)
    assert _samples(local) == _samples(on_ray)
    rows = {v.variant: v for v in Ledger(on_ray / "results.sqlite").variants()}
    assert {v: r.status for v, r in rows.items()} == {"baseline": "ok", "rtn8": "ok", "rtn4": "ok"}
    assert all(r.profile is not None for r in rows.values())  # profiled after evaluation, one at a time
    assert "Ray node" in rows["rtn8"].build.node
    # resources no node has: named at submission, before anything runs
    bad = load_recipe(_recipe(tmp_path, rtn4=", resources: {num_gpus: 1}", name="bad.yaml"))
    with pytest.raises(RayExecutorError, match=r"variants\[1\]\.resources \(rtn4\).*GPU=1 \(the most any node has: 0"):
        run_study(bad, tmp_path / "bad", executor=RayExecutor(num_cpus=2, dashboard=False))
    assert Ledger(tmp_path / "bad" / "results.sqlite").runs() == []
    assert not ray.is_initialized()  # the cluster it started for the refused study is shut down again


def _ray_cli(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "ray"), *args]


def _ray_env() -> dict:
    """`ray start --head` turns on token authentication (Ray >= 2.5x): who joins or connects says
    RAY_AUTH_MODE=token and reads the head's token from ~/.ray/auth_token (Ray reads it when it is imported, so
    the drivers here are `compress run` processes)."""
    return {**_env(), "RAY_AUTH_MODE": "token"}


@pytest.fixture
def two_nodes():
    """A head (1 CPU, node_a) and a worker node (1 CPU, node_b) on this machine, each with its profile_slot."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = _ray_env()
    head = ["start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
            "--resources={\"node_a\": 1, \"profile_slot\": 1}", "--disable-usage-stats"]
    subprocess.run(_ray_cli(*head), check=True, capture_output=True, env=env, timeout=180)
    try:
        worker = ["start", f"--address=127.0.0.1:{port}", "--num-cpus=1",
                  "--resources={\"node_b\": 1, \"profile_slot\": 1}", "--disable-usage-stats"]
        subprocess.run(_ray_cli(*worker), check=True, capture_output=True, env=env, timeout=180)
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run(_ray_cli("stop", "--force"), capture_output=True, env=env, timeout=180)


def _run_on(address: str, recipe: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(_compress("run", str(recipe), "--out", str(out), "--executor", "ray", "--address", address),
                          capture_output=True, text=True, env=_ray_env(), timeout=900)


@pytest.mark.slow
def test_two_nodes_run_the_variants_where_their_resources_are_and_a_killed_worker_loses_nothing(tmp_path, two_nodes):
    from compress.runner import run_study

    path = _recipe(tmp_path, rtn8=", resources: {custom: {node_a: 1}}", rtn4=", resources: {custom: {node_b: 1}}")
    out = tmp_path / "two"
    proc = _run_on(two_nodes, path, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {v.variant: v for v in Ledger(out / "results.sqlite").variants()}
    assert {v: r.status for v, r in rows.items()} == {"baseline": "ok", "rtn8": "ok", "rtn4": "ok"}
    assert rows["rtn8"].build.node != rows["rtn4"].build.node  # one on each node
    local = tmp_path / "local"
    run_study(load_recipe(path), local)
    assert _rows(out) == _rows(local) and _samples(out) == _samples(local)  # the ledger is whole

    # kill -9 the worker running rtn4 while it runs; rtn8 must finish, rtn4 fail with the reason, a rerun fix it
    killed = tmp_path / "killed"
    victim: list[int] = []

    def kill_rtn4() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not victim:
            found = subprocess.run(["pgrep", "-f", "ray::slimlab:rtn4"], capture_output=True, text=True).stdout.split()
            if found:
                victim.append(int(found[0]))
                os.kill(victim[0], signal.SIGKILL)
            time.sleep(0.1)

    killer = threading.Thread(target=kill_rtn4)
    killer.start()
    proc = _run_on(two_nodes, path, killed)
    killer.join()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert victim, "the rtn4 task never ran"
    rows = {v.variant: v for v in Ledger(killed / "results.sqlite").variants()}
    assert rows["rtn8"].status == "ok" and rows["baseline"].status == "ok"
    assert rows["rtn4"].status == "failed" and "worker running it died" in rows["rtn4"].reason
    proc = _run_on(two_nodes, path, killed)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rerun = Ledger(killed / "results.sqlite").runs()[-1].computed
    assert not any(w.startswith(("rtn8/", "baseline/")) for w in rerun)  # nothing finished is redone
    assert any(w.startswith("rtn4/") for w in rerun)
    assert _rows(killed) == _rows(local) and _samples(killed) == _samples(local)
    shutil.rmtree(local)
