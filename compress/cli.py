"""`compress`: run, validate and inspect studies."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
from pathlib import Path

import click

from compress.executors import ExecutorError
from compress.recipe import RecipeError, load_recipe, output_problem, recipe_from_dict
from compress.registry import load_builtin_methods
from evaluate.interrupts import Interrupted, StudyLock, StudyLocked, interruptible
from evaluate.ledger import Ledger
from evaluate.model_checks import go_offline, hub_offline, hub_unreachable, weights_problems
from evaluate.models import ModelSourceError, resolve_model_source
from evaluate.progress import quiet_console, quiet_libraries
from evaluate.tasks import load_builtin_tasks

quiet_libraries()  # before the commands import any library that draws progress bars


def _setup_logging(verbose: bool) -> None:
    """Commands without a study directory: slimlab's messages on the console, libraries' below warnings."""
    from rich.logging import RichHandler

    handler = RichHandler(show_path=False)
    if not verbose:  # libraries warn while they import (torchao's kernels, torch's pytree): not the user's concern
        handler.addFilter(lambda record: record.name == "slimlab" or record.name.startswith("slimlab.")
                          or record.levelno >= logging.ERROR)
    logging.basicConfig(level=logging.INFO if not verbose else logging.DEBUG, format="%(message)s",
                        handlers=[handler], force=True)
    for noisy in ("transformers", "httpx", "urllib3", "datasets", "filelock", "bitsandbytes"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose else logging.ERROR)


def _executor(name: str, address: str | None):
    """The local executor, or the Ray one (ray is imported only then)."""
    if name == "local":
        if address is not None:
            _fail([f"--address {address!r}: only the Ray executor connects to a cluster; add --executor ray"],
                  "cannot run (1 problem):")
        return None
    try:
        from compress.ray_executor import RayExecutor
    except ImportError as exc:
        _fail([f"--executor ray: Ray is not installed ({exc}); pip install -e \".[scale]\""],
              "cannot run (1 problem):")
    return RayExecutor(address)


def _run_study(recipe, out: str | None, verbose: bool, executor=None) -> Path:
    """The study behind one live progress view; libraries' output in <output>/run.log."""
    from compress.runner import run_study

    out_dir = Path(out or recipe.output)
    try:
        with StudyLock(out_dir), interruptible():
            try:  # messages are written once the console is back (inside it, stderr goes to run.log)
                with quiet_console(out_dir, verbose) as progress:
                    return run_study(recipe, out_dir, progress, executor)
            except ModelSourceError as exc:  # the model turned out unusable when loaded: bad input, not a crash
                _fail([f"model.name {recipe.model.name!r}: {exc}"], "cannot run (1 problem):")
            except ExecutorError as exc:
                _fail([str(exc)], "cannot run (1 problem):")
    except StudyLocked as exc:
        _fail([str(exc)], "cannot run (1 problem):")
    except Interrupted as exc:
        click.echo(f"interrupted ({exc}): finished work is saved in {out_dir}; run the same command again to resume",
                   err=True)
        sys.exit(128 + exc.signum)


def _fail(lines: list[str], header: str | None = None, code: int = 2) -> None:
    """Bad input: one clear line per problem on stderr, no traceback, exit code 2."""
    if header:
        click.echo(header, err=True)
    for line in lines:
        click.echo(line, err=True)
    sys.exit(code)


def _load_or_exit(recipe_path: str):
    try:
        return load_recipe(recipe_path)
    except RecipeError as exc:
        _fail([str(exc)], f"invalid recipe ({len(exc.issues)} problem{'s' * (len(exc.issues) > 1)}):")
    except Exception as exc:  # a bug, not bad input: still one line, and a distinct exit code
        _fail([f"{recipe_path}: internal error while validating ({type(exc).__name__}: {str(exc)[:300]}); "
               "this is a slimlab bug: please report it with the recipe"], code=1)


def _preflight(recipe, out: str | None) -> None:
    """What `run` checks beyond validation, before any heavy work: the output directory actually used, and
    that the model's weights are present and complete (validation accepts a config-only directory). A hub
    model found in the local cache while the hub is unreachable runs offline instead of waiting on retries."""

    problems = []
    target = out if out is not None else recipe.output
    if (why := output_problem(target)) is not None:
        problems.append(f"{'--out' if out is not None else 'output'} {target!r}: {why}")
    try:
        source = resolve_model_source(recipe.model.name)
    except ModelSourceError as exc:
        problems.append(f"model.name {recipe.model.name!r}: {exc}")
    else:
        if source.kind in ("path", "embedded"):
            problems.extend(f"model.name {recipe.model.name!r}: {why}"
                            for why in weights_problems(Path(source.location), require=True))
        elif source.kind == "hub" and not hub_offline() and (why := hub_unreachable()) is not None:
            logging.getLogger("slimlab").warning("the hub is unreachable (%s): running offline from the local cache",
                                                 why)
            go_offline()
    if problems:
        _fail(problems, f"cannot run ({len(problems)} problem{'s' * (len(problems) > 1)}):")


@click.group()
@click.version_option(package_name="slimlab")
def main() -> None:
    """slimlab: build compressed variants of a language model and judge them against the FP baseline."""
    # torchao, imported by transformers' quantizers, makes torch warn about its enums on every command; torch logs
    # through a handler of its own and resets its loggers' levels on import, so a filter on the logger it is
    # (and torchao itself warns that its CUDA-only kernels do not load on a CPU machine)
    for name in ("torch.utils._pytree", "torchao"):
        logging.getLogger(name).addFilter(lambda record: record.levelno >= logging.ERROR)


@main.command()
@click.argument("recipe", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", type=click.Path(file_okay=False), help="output directory (default: the recipe's)")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: one model after another in this process; ray: each variant a Ray task")
@click.option("--address", default=None, help="Ray: the cluster's HOST:PORT or 'auto' (default: start a local one)")
@click.option("-v", "--verbose", is_flag=True)
def run(recipe: str, out: str | None, executor: str, address: str | None, verbose: bool) -> None:
    """Run the study in RECIPE; rerunning into the same directory resumes."""
    _setup_logging(verbose)
    if out is not None and (why := output_problem(out)) is not None:
        _fail([f"--out {out!r}: {why}"], "cannot run (1 problem):")
    parsed = _load_or_exit(recipe)
    _preflight(parsed, out)
    results = _run_study(parsed, out, verbose, _executor(executor, address))
    click.echo(f"results: {results}\nreport:  {results.parent / 'report.md'}\nlog:     {results.parent / 'run.log'}")


@main.command("eval")
@click.argument("model")
@click.option("--task", "tasks_", multiple=True, required=True, help="task name (repeatable)")
@click.option("--n", default=50, show_default=True, help="items per task")
@click.option("--prompt-style", type=click.Choice(["direct", "cot"]), default="direct", show_default=True)
@click.option("--k-shot", default=0, show_default=True)
@click.option("--batch-size", default=16, show_default=True)
@click.option("--max-new-tokens", type=int, default=None, help="default: what the prompt style needs")
@click.option("--chat-template", type=click.Choice(["auto", "true", "false"]), default="false", show_default=True,
              help="wrap each prompt in the model's chat template (auto: when the tokenizer has one)")
@click.option("--dtype", default="float32", show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), required=True, help="output directory")
@click.option("-v", "--verbose", is_flag=True)
def eval_(model: str, tasks_: tuple[str, ...], n: int, prompt_style: str, k_shot: int, batch_size: int,
          max_new_tokens: int | None, chat_template: str, dtype: str, device: str, seed: int, out: str,
          verbose: bool) -> None:
    """Evaluate MODEL alone (no variants, no profiling) on one or more tasks."""
    _setup_logging(verbose)

    chat = {"auto": "auto", "true": True, "false": False}[chat_template]
    data = {
        "name": "eval", "seed": seed, "model": {"name": model, "dtype": dtype, "device": device},
        "tasks": [{"name": t, "n": n, "prompt_style": prompt_style, "k_shot": k_shot,
                   "max_new_tokens": max_new_tokens, "chat_template": chat} for t in tasks_],
        "decoding": {"batch_size": batch_size}, "profile": {"enabled": False}, "output": out,
    }
    try:
        recipe = recipe_from_dict(data)
    except RecipeError as exc:
        _fail([str(exc)], f"invalid arguments ({len(exc.issues)} problem{'s' * (len(exc.issues) > 1)}):")
    _preflight(recipe, out)
    results = _run_study(recipe, out, verbose)
    click.echo(f"results: {results}")


@main.command()
@click.argument("recipe", type=click.Path(exists=True, dir_okay=False))
def validate(recipe: str) -> None:
    """Check RECIPE completely (fields, methods, tasks, model config) without running anything heavy."""
    parsed = _load_or_exit(recipe)
    click.echo(f"{recipe}: ok — model {parsed.model.name}, {len(parsed.variants)} variant(s), "
               f"{len(parsed.tasks)} task(s), output {parsed.output}")


@main.command()
@click.option("--params/--no-params", default=True, help="list each method's parameters")
def methods(params: bool) -> None:
    """List the registered compression methods."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    for name, spec in sorted(load_builtin_methods().items()):
        reason = spec.unavailable_reason(device)
        note = f" [not on this machine: {reason}]" if reason else ""
        click.echo(f"{name:<18} {spec.kind:<9} {spec.description}{note}")
        if params:
            for pname, ptype, default in spec.parameter_table():
                click.echo(f"{'':<28}{pname}: {ptype} = {default}")


@main.command()
def tasks() -> None:
    """List the registered evaluation tasks."""

    for name, spec in sorted(load_builtin_tasks().items(), key=lambda kv: (kv[1].family, kv[0])):
        where = "offline" if spec.offline else "hub or data_dir"
        click.echo(f"{name:<22} {spec.family:<16} {spec.answer_type:<7} {spec.metric:<16} {where:<16} "
                   f"{spec.description}")


@main.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
def report(directory: str) -> None:
    """Rebuild the report of a study DIRECTORY from its ledger."""
    from evaluate.report import write_outputs

    ledger_path = Path(directory) / "results.sqlite"
    if not ledger_path.exists():
        raise click.ClickException(f"{ledger_path} not found: is {directory} a study output directory?")
    path = write_outputs(Ledger(ledger_path), Path(directory))
    click.echo(f"results: {path}\nreport:  {path.parent / 'report.md'}\nhtml:    {path.parent / 'report.html'}")


@main.command()
@click.argument("dir1", type=click.Path(exists=True, file_okay=False))
@click.argument("dir2", type=click.Path(exists=True, file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), help="output directory (default: compare-<DIR1>-vs-<DIR2>)")
def compare(dir1: str, dir2: str, out: str | None) -> None:
    """Put two studies side by side (compare.md and a self-contained compare.html)."""
    from evaluate.compare import write_compare

    out_dir = Path(out or f"compare-{Path(dir1).resolve().name}-vs-{Path(dir2).resolve().name}")
    try:
        path = write_compare(Path(dir1), Path(dir2), out_dir)
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"comparison: {path}\nhtml:       {path.with_suffix('.html')}")


@main.command()
@click.argument("model_or_config")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--quantize", default="", help="comma-separated methods, default parameters (e.g. bnb_int8,bnb_4bit)")
@click.option("--batch-sizes", default="1", show_default=True, help="comma-separated, e.g. 1,8,32")
@click.option("--prompt-tokens", default=64, show_default=True)
@click.option("--new-tokens", default=32, show_default=True)
@click.option("--warmup", default=1, show_default=True)
@click.option("--repeats", default=5, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), help="write the JSON here (and the markdown beside it)")
def profile(model_or_config: str, dtype: str, device: str, quantize: str, batch_sizes: str, prompt_tokens: int,
            new_tokens: int, warmup: int, repeats: int, out: str | None) -> None:
    """Profile memory and speed of MODEL_OR_CONFIG alone, and of its quantized variants.

    MODEL_OR_CONFIG: a model reference, or an architecture only (a shipped config such as
    qwen2.5-0.5b-instruct, a config.json) for random weights of the real shape (no accuracy)."""

    from compress.profile_cli import ProfileTargetError, profile_target, render_profile_markdown, shipped_configs
    from evaluate.profiling import ProfileConfig

    try:
        sizes = tuple(int(b) for b in batch_sizes.split(","))
    except ValueError as exc:
        raise click.BadParameter(f"{batch_sizes!r}: use comma-separated integers, e.g. 1,8,32",
                                 param_hint="--batch-sizes") from exc
    if new_tokens < 2 or any(b < 1 for b in sizes):
        raise click.BadParameter("--new-tokens must be >= 2 and batch sizes >= 1")
    config = ProfileConfig(prompt_tokens, new_tokens, warmup, repeats, sizes)
    methods = tuple(m.strip() for m in quantize.split(",") if m.strip())
    try:
        result = profile_target(model_or_config, dtype, device, methods, config,
                                log=lambda msg: click.echo(msg, err=True))
    except ProfileTargetError as exc:
        raise click.ClickException(f"{exc}\nshipped configs: {', '.join(shipped_configs())}") from exc
    text = render_profile_markdown(result)
    click.echo(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(result.model_dump_json(indent=2))
        Path(out).with_suffix(".md").write_text(text)
        click.echo(f"written: {out} and {Path(out).with_suffix('.md')}", err=True)


def console_main() -> None:
    """The `compress` executable: the click group, then a quick exit. Once torch and transformers are
    loaded, the interpreter's module teardown takes over a second on a 2-core CPU and does nothing a
    finished command needs; exit handlers (Ray, temp files) and stream/log flushes still run first.
    Tests call `main` in-process and keep the normal exit."""
    code: int | str | None = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    if isinstance(code, str):  # sys.exit("message") prints the message and fails
        print(code, file=sys.stderr)
        code = 1
    logging.shutdown()
    atexit._run_exitfuncs()  # private but long-stable: the handlers a normal exit would run
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BrokenPipeError, ValueError):  # reader gone (`... | head`) or stream closed
            stream.flush()
    os._exit(code or 0)


if __name__ == "__main__":
    console_main()
