"""The contract every task honours, and the registry that makes adding one a single file."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from evaluate.registry import Registry

AnswerType = Literal["number", "list", "letter", "text", "math"]  # math: a LaTeX expression (MATH)


@dataclass(frozen=True)
class Item:
    """One evaluation instance, identical for the baseline and every variant."""

    id: str
    question: str  # the instance input as shown to the model (choices included for MC)
    gold: str  # canonical gold answer: "14", "-3, 5, 7", "B", or a reference text
    target: str = ""  # a full reference completion (worked solution); exemplars and training use it
    choices: tuple[str, ...] = ()  # option texts for multiple choice, labelled A, B, C, ...
    meta: dict[str, Any] = field(default_factory=dict)  # perturbation, categories, domains, ...


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: how to get items, and how to judge an answer."""

    name: str
    description: str
    answer_type: AnswerType
    load: Callable[..., list[Item]]  # load(n=, seed=, split=, data_dir=) -> items
    definition: str = ""  # the instruction shown when a prompt style asks for one
    # Plain direct prompts (no chain of thought, no chat template) want the bare answer on one line: they end
    # at `stop` (a newline) within `max_new_tokens`. Chain-of-thought and chat-template prompts let the model
    # write its own layout: they end at EOS / end of turn / a new exemplar (`item_marker`), within
    # `max_new_tokens_free` (see evaluate.prompts.decoding_for).
    max_new_tokens: int = 64
    stop: tuple[str, ...] = ("\n",)
    max_new_tokens_free: int = 256
    item_marker: str = "Question:"  # how each question (and so a new exemplar the model starts) begins
    family: str = ""  # groups tasks in reports (sorting, math, multiple_choice, sni, ...)
    metric: str = "accuracy"
    offline: bool = True  # True when items can be produced with no network and no data_dir
    breakdown: tuple[str, ...] = ()  # meta keys reported per value: metrics["by_<key>"] = {value: accuracy}
    # a task that owns its prompt layout: render(item, prompt_config, exemplars) -> prompt text
    render: Callable[[Item, Any, list[Item]], str] | None = None
    # per-item shots (e.g. SNI's Positive Examples of the item's own task file): exemplars(item, k, data_dir);
    # None = k seeded shots drawn once from the task's train split and shared by every item
    exemplars: Callable[[Item, int, str | None], list[Item]] | None = None
    needs_data_dir: str = ""  # non-empty: the task reads local files; the message says what data_dir must hold
    dataset: Any = None  # a sources.DatasetSpec: where the items and exemplars come from (hub, data_dir, packaged)
    scorer: str | None = None  # the registered Scorer that reads and judges an output; None: `answer_type`'s
    # cell-level metrics beyond accuracy (e.g. MR-Score from its parts): (samples, items) -> {CellMetrics field: v}
    cell_metrics: Callable[[list[dict], list[Item]], dict[str, Any]] | None = None
    # True: no generation; `load` gives one corpus item that the harness cuts into token windows, scored by
    # their log-likelihood (perplexity) and against the FP model (evaluate/fidelity.py); lower is better
    windows: bool = False


TASKS: Registry[TaskSpec] = Registry("task", "evaluate.tasks")


def register_task(spec: TaskSpec) -> TaskSpec:
    return TASKS.register(spec.name, spec)
