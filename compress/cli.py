"""`compress`: run, validate and inspect studies."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from compress.recipe import RecipeError, load_recipe


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(level=logging.INFO if not verbose else logging.DEBUG, format="%(message)s",
                        handlers=[RichHandler(show_path=False)], force=True)
    for noisy in ("transformers", "httpx", "urllib3", "datasets", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _load_or_exit(recipe_path: str):
    try:
        return load_recipe(recipe_path)
    except RecipeError as exc:
        click.echo(f"invalid recipe ({len(exc.issues)} problem{'s' * (len(exc.issues) > 1)}):", err=True)
        click.echo(str(exc), err=True)
        sys.exit(2)


@click.group()
@click.version_option(package_name="slimlab")
def main() -> None:
    """slimlab: build compressed variants of a language model and judge them against the FP baseline."""


@main.command()
@click.argument("recipe", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", type=click.Path(file_okay=False), help="output directory (default: the recipe's)")
@click.option("-v", "--verbose", is_flag=True)
def run(recipe: str, out: str | None, verbose: bool) -> None:
    """Run the study in RECIPE; rerunning into the same directory resumes."""
    _setup_logging(verbose)
    parsed = _load_or_exit(recipe)
    from compress.runner import run_study

    results = run_study(parsed, out)
    click.echo(f"results: {results}\nreport:  {results.parent / 'report.md'}")


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
    from compress.registry import load_builtin_methods

    for name, spec in sorted(load_builtin_methods().items()):
        gpu = " [CUDA only]" if spec.needs_cuda else ""
        click.echo(f"{name:<18} {spec.kind:<9} {spec.description}{gpu}")
        if params:
            for pname, ptype, default in spec.parameter_table():
                click.echo(f"{'':<28}{pname}: {ptype} = {default}")


@main.command()
def tasks() -> None:
    """List the registered evaluation tasks."""
    from evaluate.tasks import load_builtin_tasks

    for name, spec in sorted(load_builtin_tasks().items(), key=lambda kv: (kv[1].family, kv[0])):
        where = "offline" if spec.offline else "hub or data_dir"
        click.echo(f"{name:<22} {spec.family:<16} {spec.answer_type:<7} {spec.metric:<16} {where:<16} "
                   f"{spec.description}")


@main.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
def report(directory: str) -> None:
    """Rebuild the report of a study DIRECTORY from its ledger."""
    from compress.ledger import Ledger
    from evaluate.report import write_outputs

    ledger_path = Path(directory) / "results.sqlite"
    if not ledger_path.exists():
        raise click.ClickException(f"{ledger_path} not found: is {directory} a study output directory?")
    path = write_outputs(Ledger(ledger_path), Path(directory))
    click.echo(f"results: {path}\nreport:  {path.parent / 'report.md'}")


if __name__ == "__main__":
    main()
