"""The Ray executor (`compress run RECIPE --executor ray [--address ADDR]`): the baseline, then every variant
as a Ray task with the recipe's resources, then profiling one variant at a time per node.

- Only the driver writes the ledger. A task runs an ordinary Study on a private in-memory copy of its variant's
  rows (evaluate.ledger.JournaledLedger) and streams every write, sample file and phase change back as a record
  (a Ray streaming generator); the driver applies each as it arrives, so a worker killed mid-variant loses
  only the item batch in flight (finished cells are in the ledger, partial sample files in storage).
- Checkpoints go to `storage:` (a path every node sees; default the output directory), the ledger, samples and
  report to the output directory on the driver.
- Resume: a variant whose cells, profile (and served row) are all finished is not submitted again; a task
  skips what its snapshot says is finished.
- Failures: an exception inside a variant marks it failed, as locally. A worker that dies (kill -9, the OOM
  killer) marks only its variant failed, with the reason; a rerun retries it. Ray's own task retry is off; the
  driver resubmits once when the node was lost (NodeDiedError), since that is no fault of the variant.
- Profiling: latency is timed after every evaluation task has finished, each profile task holding the node's
  one `profile_slot` (a custom resource: 1 per node, on GPU nodes as many as the node has GPUs), so no two
  timings and no slimlab build or evaluation share a device while a latency is measured."""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compress.executors import ExecutorError
from compress.recipe import BASELINE, Recipe, ResourcesSpec, recipe_model
from compress.runner import Cell, Study
from evaluate.ledger import JournaledLedger, LedgerWrite
from evaluate.profiling import profile_in_subprocess
from evaluate.progress import NullProgress, Progress, quiet_libraries, strip_ansi
from evaluate.records import Profile

log = logging.getLogger("slimlab")

PROFILE_SLOT = "profile_slot"
CONNECT_TIMEOUT_S = 5.0
DEFAULT_NUM_CPUS = 1.0  # a task's CPUs when the recipe names none
_NODE_LOST = ("NodeDiedError", "LocalRayletDiedError")
_WORKER_DIED = ("WorkerCrashedError", "OutOfMemoryError", "OutOfDiskError", "ObjectLostError", "OwnerDiedError")


class RayExecutorError(ExecutorError):
    """Bad input for the Ray executor (unreachable cluster, resources no node has): raised before heavy work."""


# what a task streams to the driver ------------------------------------------------------------------------
@dataclass(frozen=True)
class SampleFile:
    variant: str
    cell: str
    text: str


@dataclass(frozen=True)
class PhaseChange:
    variant: str
    phase: str  # building / evaluating / ... ; "finished:<status>" at the end


class _StreamingProgress(NullProgress):
    """A worker's progress: phase changes go to the driver's view (per-item progress stays on the worker)."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink

    def variant(self, name: str, phase: str) -> None:
        self.sink(PhaseChange(name, phase))

    def finished(self, name: str, status: str) -> None:
        self.sink(PhaseChange(name, f"finished:{status}"))


_END = object()


def run_model_task(recipe_data: dict, work_dir: str, run_id: int | None, position: int, name: str,
                   snapshot: list[LedgerWrite], cells: list[Cell], num_cpus: float) -> Any:
    """One Ray task: the baseline (name == "baseline") or one variant, its chain inside. A generator: yields
    each LedgerWrite, SampleFile and PhaseChange as it happens; raises what escaped the study."""
    import ray
    import torch

    quiet_libraries()
    torch.set_num_threads(max(1, int(num_cpus)))
    node = ray.get_runtime_context().get_node_id()
    out: queue.Queue = queue.Queue()
    recipe = recipe_model().model_validate(recipe_data)
    Path(work_dir, "logs").mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(Path(work_dir, "logs", f"ray-{name}.log"), encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    study = Study(recipe, Path(work_dir), _StreamingProgress(out.put), ledger=JournaledLedger(out.put, snapshot),
                  node=f"{socket.gethostname()} (Ray node {node[:12]})",
                  sample_sink=lambda v, c, text: out.put(SampleFile(v, c, text)), profile_inline=False)
    study.run_id = run_id
    failure: list[str] = []

    def work() -> None:
        try:
            tokenizer = study.load_source()
            study._cells = cells
            if name == BASELINE:
                study.run_baseline(tokenizer, cells)
            else:
                steps = next(v.steps for v in recipe.variants if v.name == name)
                study.run_variant(position, name, steps, tokenizer, cells)
        except BaseException:
            failure.append(traceback.format_exc())
        finally:
            out.put(_END)

    thread = threading.Thread(target=work, name=f"slimlab-{name}", daemon=True)
    thread.start()
    while (item := out.get()) is not _END:
        yield item
    thread.join()
    logging.getLogger().removeHandler(handler)
    handler.close()
    if failure:
        raise RuntimeError(f"{name} failed on {study.node}:\n{failure[0]}")


def profile_task(location: str, dtype: str, device: str, config: Any, trust_remote_code: bool,
                 num_cpus: float) -> Profile:
    """Latency and memory of one model in a fresh process (the task holds its node's profile_slot)."""
    import torch

    torch.set_num_threads(max(1, int(num_cpus)))
    return profile_in_subprocess(location, dtype, device, config, trust_remote_code)


# the driver ------------------------------------------------------------------------------------------------
def _check_address(address: str) -> None:
    """A TCP connect to the head's GCS port before ray.init, which would otherwise wait a long time."""
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise RayExecutorError(f"--address {address!r} is not HOST:PORT (e.g. 10.0.0.5:6379, the address "
                               "`ray start --head` prints), 'auto' (the cluster this machine belongs to) or empty "
                               "(a local cluster)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise RayExecutorError(f"--address {address!r}: no Ray head answers there ({exc}); start one with `ray "
                               f"start --head --port={port}` on that machine, or check the host and port") from None


def task_options(resources: ResourcesSpec) -> dict[str, Any]:
    opts: dict[str, Any] = {"num_cpus": resources.num_cpus if resources.num_cpus is not None else DEFAULT_NUM_CPUS}
    if resources.num_gpus:
        opts["num_gpus"] = resources.num_gpus
    if resources.memory:
        opts["memory"] = int(resources.memory)
    if resources.custom:
        opts["resources"] = dict(resources.custom)
    return opts


def missing_resources(request: dict[str, float], nodes: list[dict[str, float]]) -> str | None:
    """None if some node has every resource of `request` in the asked amount; else the shortfall, in words."""
    if any(all(node.get(k, 0.0) >= v for k, v in request.items()) for node in nodes):
        return None
    short = []
    for k, v in request.items():
        most = max((node.get(k, 0.0) for node in nodes), default=0.0)
        if most < v:
            short.append(f"{k}={v:g} (the most any node has: {most:g})")
    return ", ".join(short) or f"{request} together on one node (no node has all of them at once)"


def _as_request(opts: dict[str, Any]) -> dict[str, float]:
    request = {"CPU": opts["num_cpus"], "GPU": opts.get("num_gpus", 0), "memory": opts.get("memory", 0),
               **opts.get("resources", {})}
    return {k: float(v) for k, v in request.items() if v}


def _error_name(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    return type(cause).__name__ if isinstance(cause, BaseException) else type(exc).__name__


class RayExecutor:
    """Study tasks on a Ray cluster: a local one started here (address None), or one at `address`."""

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None, dashboard: bool | None = None) -> None:
        self.address = address
        self.num_cpus = num_cpus  # a local cluster's CPUs (default: this machine's)
        self.dashboard = dashboard  # a local cluster's dashboard (None: when ray[default] is installed)
        self.started = False
        self.dashboard_url: str | None = None

    # connection and the check of the recipe's resources ------------------------------------------------------
    def connect(self, recipe: Recipe) -> None:
        import ray

        if self.address not in (None, "", "auto"):
            _check_address(self.address)
        # Ray's own messages go to the study's run.log (the root logger's file), its workers' output to its logs
        kwargs: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
        if self.address in (None, ""):
            # "local": always a new cluster of our own, never one a stale /tmp/ray/ray_current_cluster points at
            kwargs.update(address="local", num_cpus=self.num_cpus or os.cpu_count() or 1, resources={PROFILE_SLOT: 1},
                          include_dashboard=self.dashboard)
        else:
            kwargs["address"] = self.address
        try:
            context = ray.init(**kwargs)
        except (ConnectionError, RuntimeError) as exc:
            hint = ""
            if os.environ.get("RAY_AUTH_MODE") != "token":
                hint = ("; if the head was started with `ray start --head` it requires its token (Ray's default "
                        "since 2.5x): set RAY_AUTH_MODE=token and make the token readable (~/.ray/auth_token or "
                        "RAY_AUTH_TOKEN)")
            raise RayExecutorError(f"cannot reach the Ray cluster at {self.address!r}: {exc}{hint}") from None
        self.started = True
        self.dashboard_url = getattr(context, "dashboard_url", None) or None
        if self.dashboard_url and not self.dashboard_url.startswith("http"):
            self.dashboard_url = f"http://{self.dashboard_url}"
        self.check_resources(recipe)

    def nodes(self) -> list[dict[str, float]]:
        import ray

        return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]

    def check_resources(self, recipe: Recipe) -> None:
        """Every task the study will submit fits some alive node: else the variant, the resource and the most any
        node has, named now (Ray would leave such a task pending for ever)."""
        nodes = self.nodes()
        problems = []
        for where, name in [("resources", BASELINE)] + [(f"variants[{i}].resources", v.name)
                                                        for i, v in enumerate(recipe.variants)]:
            request = _as_request(task_options(recipe.resources_for(name)))
            if (why := missing_resources(request, nodes)) is not None:
                problems.append(f"{where} ({name}): no node of the cluster has {why}; lower the request or add a "
                                "node that has it")
            elif recipe.profile.enabled and missing_resources({**request, PROFILE_SLOT: 1.0}, nodes) is not None:
                problems.append(
                    f"{where} ({name}): no node has a `{PROFILE_SLOT}` beside what the task asks; profiling holds "
                    f"one per node so that no two timings overlap: start each node with `ray start ... "
                    f"--resources='{{\"{PROFILE_SLOT}\": 1}}'` (on GPU nodes, as many as it has GPUs), or set "
                    "profile.enabled: false")
        if problems:
            raise RayExecutorError("; ".join(problems))

    def close(self) -> None:
        import ray

        if self.started:
            ray.shutdown()
            self.started = False

    # the run --------------------------------------------------------------------------------------------------
    def run(self, study: Study, tokenizer: Any, cells: list[Cell]) -> None:
        import ray

        view = _ClusterView(study.progress, self.dashboard_url)
        recipe_data = study.recipe.model_dump(mode="json")
        cells_ref = ray.put(cells)
        task = ray.remote(run_model_task)

        def submit(position: int, name: str) -> Any:
            opts = task_options(study.recipe.resources_for(name))
            gen = task.options(**opts, name=f"slimlab:{name}", max_retries=0, num_returns="streaming").remote(
                recipe_data, str(study.work_dir), study.run_id, position, name, study.ledger.snapshot(name),
                cells_ref, opts["num_cpus"])
            view.phase(name, "submitted")
            return gen

        # the baseline first: every variant is judged against it
        self._drain(study, view, {submit(0, BASELINE): (0, BASELINE, 0)}, submit)
        if study.ledger.variant(BASELINE) is None or study.ledger.variant(BASELINE).status != "ok":
            row = study.ledger.variant(BASELINE)
            raise RuntimeError(f"the baseline did not finish on the cluster: {row.reason if row else 'no record'}")
        running = {}
        for position, v in enumerate(study.recipe.variants, start=1):
            if (status := self.finished(study, v.name, v.steps, cells)) is not None:
                view.finished(v.name, status)
                continue
            running[submit(position, v.name)] = (position, v.name, 0)
        self._drain(study, view, running, submit)
        self.profile_all(study, view)
        view.close()

    def finished(self, study: Study, name: str, steps: list, cells: list[Cell]) -> str | None:
        """The status of a variant with nothing left to do on a worker (its profile may still be pending), or
        None: submit it."""
        key = study.variant_key(steps)
        row = study.ledger.variant(name)
        if row is None or row.key != key or row.status not in ("ok", "skipped"):
            return None
        if row.status == "ok" and (study.cells_pending(name, key, cells) or study.recipe.backend.name != "hf"):
            return None  # cells to evaluate, or a served row that is the task's to check
        return row.status

    def _drain(self, study: Study, view: _ClusterView, running: dict, submit: Any) -> None:
        """Apply what every running task streams, as it arrives, until all have ended."""
        import ray

        while running:
            ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            for gen in ready:
                position, name, attempt = running[gen]
                try:
                    item = ray.get(next(gen))
                except StopIteration:
                    del running[gen]
                    continue
                except Exception as exc:
                    del running[gen]
                    kind = _error_name(exc)
                    if kind in _NODE_LOST and attempt == 0:
                        log.warning("%s: its node was lost (%s); submitting it once more", name, kind)
                        running[submit(position, name)] = (position, name, 1)
                        continue
                    self._record_failure(study, view, name, exc, kind)
                    continue
                self._apply(study, view, item)

    def _apply(self, study: Study, view: _ClusterView, item: Any) -> None:
        if isinstance(item, LedgerWrite):
            if item.method == "add_computed":
                study.done(item.args[1])  # the driver's own run row
            else:
                item.apply(study.ledger)
        elif isinstance(item, SampleFile):
            study.save_samples(item.variant, item.cell, item.text)
        elif isinstance(item, PhaseChange):
            if item.phase.startswith("finished:"):
                view.finished(item.variant, item.phase.split(":", 1)[1])
            else:
                view.phase(item.variant, item.phase)

    def _record_failure(self, study: Study, view: _ClusterView, name: str, exc: BaseException, kind: str) -> None:
        """A task that ended without finishing its variant: that variant alone is failed, with the reason."""
        cause = getattr(exc, "cause", None) or exc
        text = strip_ansi(str(cause)).strip()  # Ray colours its task names
        if kind in _WORKER_DIED or kind in _NODE_LOST:
            reason = f"the Ray worker running it died ({kind}: {text.splitlines()[0][:300] if text else ''})"
        else:
            reason = f"{kind}: {text[-1500:]}"
        log.error("%s failed on the cluster: %s", name, reason)
        steps = next((v.steps for v in study.recipe.variants if v.name == name), [])
        key = study.baseline_key() if name == BASELINE else study.variant_key(steps)
        study.ledger.upsert_variant(name, key, status="failed", reason=f"{reason}; rerun the study to retry it")
        view.finished(name, "failed")

    def profile_all(self, study: Study, view: _ClusterView) -> None:
        """Every pending profile, each task holding its node's profile_slot, after all evaluation has ended."""
        import ray

        m = study.recipe.model
        task = ray.remote(profile_task)
        pending = {}
        for row in study.ledger.variants():
            if row.status != "ok" or not study.profile_pending(row.variant) or row.model_dir is None:
                continue
            if "@" in row.variant:  # a served row is profiled through its server, in its task
                continue
            opts = task_options(study.recipe.resources_for(row.variant))
            opts["resources"] = {**opts.get("resources", {}), PROFILE_SLOT: 1}
            ref = task.options(**opts, name=f"slimlab:profile:{row.variant}", max_retries=0).remote(
                row.model_dir, m.dtype, m.device, study.profile_config(), m.trust_remote_code, opts["num_cpus"])
            pending[ref] = row
            view.phase(row.variant, "profiling (queued for a profile_slot)")
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            row = pending.pop(ready[0])
            try:
                profile = ray.get(ready[0])
            except Exception as exc:
                self._record_failure(study, view, row.variant, exc, _error_name(exc))
                continue
            study.ledger.upsert_variant(row.variant, row.key, profile=profile)
            study.done(f"{row.variant}/profile")
            view.phase(row.variant, "profiled")


class _ClusterView:
    """The study's progress view, for many models at once: which run, which finished or failed."""

    def __init__(self, progress: Progress, dashboard_url: str | None) -> None:
        self.progress = progress
        self.phases: dict[str, str] = {}
        if dashboard_url:
            progress.note(f"Ray dashboard: {dashboard_url}")

    def _show(self) -> None:
        running = [f"{n} ({p})" for n, p in self.phases.items()]
        self.progress.variant(f"on the cluster, {len(running)} running", ", ".join(running) or "idle")

    def phase(self, name: str, phase: str) -> None:
        self.phases[name] = phase
        self._show()

    def finished(self, name: str, status: str) -> None:
        self.phases.pop(name, None)
        self.progress.finished(name, status)
        self._show()

    def close(self) -> None:
        self.phases.clear()
