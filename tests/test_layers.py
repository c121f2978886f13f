"""The layers point one way: compress/ (recipe, methods, runner, CLI) may import evaluate/ (tasks, scoring, models,
formats, measurements, ledger, report); evaluate/ never imports compress/. Checked on the source, so a lazy import
inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = {"torch", "transformers", "llmcompressor", "compressed_tensors", "bitsandbytes", "optimum", "peft",
         "bert_score", "datasets", "matplotlib", "markdown_it", "gguf", "safetensors", "accelerate", "psutil",
         "pynvml", "tokenizers", "openai", "filelock", "huggingface_hub", "sentence_transformers", "ray",
         "pyarrow", "rich", "PIL"}


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(module, inside a function) for every import statement of a file."""
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.Import):
                found.extend((alias.name, in_function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
                found.append((child.module, in_function))
            visit(child, inside)

    visit(tree, False)
    return found


def test_evaluate_never_imports_compress():
    offenders = [f"{p.relative_to(ROOT)} imports {module}"
                 for p in sorted((ROOT / "evaluate").rglob("*.py"))
                 for module, _ in _imports(p) if module == "compress" or module.startswith("compress.")]
    assert offenders == []


# Modules whose import pulls torch/transformers (directly or through what they import): imported inside the CLI's
# commands so `compress --help` and `compress validate` stay fast.
HEAVY_FIRST_PARTY = {
    "compress.build",
    "compress.profile_cli",
    "compress.ray_executor",
    "compress.registry",
    "compress.runner",
    "evaluate.api_model",
    "evaluate.bertscore",
    "evaluate.compare",
    "evaluate.fidelity",
    "evaluate.formats",
    "evaluate.generation",
    "evaluate.harness",
    "evaluate.judge",
    "evaluate.ledger",
    "evaluate.loglikelihood",
    "evaluate.memory",
    "evaluate.model_checks",
    "evaluate.models",
    "evaluate.pareto",
    "evaluate.plots",
    "evaluate.profiling",
    "evaluate.progress",
    "evaluate.report",
    "evaluate.scoring",
    "evaluate.sni",
    "evaluate.tasks",
    "evaluate.tasks.perplexity",
    "evaluate.tasks.sources",
}


def test_first_party_imports_sit_at_module_level():
    """Inside a function, a first-party import is allowed only to keep a light entry point light (the CLI,
    validation), and only of a module on the heavy list; everything else imports at the top."""
    allowed_files = {"compress/cli.py", "compress/recipe.py", "compress/calibration.py", "evaluate/models.py"}
    offenders = []
    for path in sorted([*(ROOT / "evaluate").rglob("*.py"), *(ROOT / "compress").rglob("*.py")]):
        rel = str(path.relative_to(ROOT))
        for module, in_function in _imports(path):
            first_party = module.split(".")[0] in ("compress", "evaluate")
            if in_function and first_party and not (rel in allowed_files and module in HEAVY_FIRST_PARTY):
                offenders.append(f"{rel}: {module}")
    assert offenders == []
