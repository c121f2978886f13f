"""Seeded synthetic tasks (sorting, arithmetic word problems, multiple choice), stdlib only.

These are the tasks the embedded default model ``embedded:tiny-reasoner`` is trained on, and
they need no network and no data files.

Held-out guarantee: an item belongs to split ``"test"`` iff
``int(sha1(question).hexdigest(), 16) % 5 == 0``, otherwise to ``"train"``.  Every loader draws
candidates deterministically from ``(task name, seed)`` and keeps only those of the requested
split, so no test question can ever be produced for training, whatever the seed.

Ranges (chosen for learnability by a tiny model and documented here):

* sorting: *distinct* integers (drawn without replacement); positive tasks use 0..99,
  mixed-sign tasks use -99..99.
* synth_arith: 2-3 operations (+, -, and x2 / x3), start value 2..20, operands 1..10,
  every intermediate result stays within 0..99.
* synth_mc: option values 0..99 (sums up to 99), gold letters balanced within one.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from evaluate.tasks.base import Item, TaskSpec, register_task

Split = str
_MAX_ATTEMPT_FACTOR = 1000
LETTERS = "ABCD"

SORT_DEFINITION = "Sort the given integers from smallest to largest and write them separated by commas."
ARITH_DEFINITION = (
    "Solve the arithmetic word problem step by step and finish with 'The answer is' and the number."
)
MC_DEFINITION = "Answer the multiple-choice question with the letter of the correct option."


def question_sha1(question: str) -> str:
    """Hex sha1 of a question, the basis of item ids and of the split."""
    return hashlib.sha1(question.encode("utf-8")).hexdigest()


def split_of(question: str) -> Split:
    """``"test"`` iff sha1(question) % 5 == 0, otherwise ``"train"``."""
    return "test" if int(question_sha1(question), 16) % 5 == 0 else "train"


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def _collect(
    task: str,
    n: int,
    seed: int,
    split: str,
    make: Callable[[random.Random, Counter[str]], Item | None],
) -> list[Item]:
    """Draw candidates from ``make(rng, gold_counts)`` until ``n`` unique items of ``split`` exist.

    ``gold_counts`` counts the gold answers accepted so far (used to balance MC letters).
    """
    _check_split(split)
    rng = random.Random(f"slimlab-synthetic:{task}:{seed}")
    seen: set[str] = set()
    gold_counts: Counter[str] = Counter()
    items: list[Item] = []
    attempts = 0
    while len(items) < n:
        attempts += 1
        if attempts > _MAX_ATTEMPT_FACTOR * (n + 10):
            raise RuntimeError(f"{task}: could not draw {n} unique {split!r} items")
        item = make(rng, gold_counts)
        if item is None or item.question in seen or split_of(item.question) != split:
            continue
        seen.add(item.question)
        gold_counts[item.gold] += 1
        items.append(item)
    return items


def _item(task: str, question: str, gold: str, target: str, **kw: object) -> Item:
    return Item(id=f"{task}-{question_sha1(question)[:10]}", question=question, gold=gold, target=target, **kw)


# --------------------------------------------------------------------------------------- sorting


def _make_sort_loader(task: str, length: int, lo: int, hi: int) -> Callable[..., list[Item]]:
    def make(rng: random.Random, _counts: Counter[str]) -> Item:
        nums = rng.sample(range(lo, hi + 1), length)
        question = "Sort these numbers in ascending order: " + ", ".join(map(str, nums))
        answer = ", ".join(map(str, sorted(nums)))
        return _item(task, question, answer, answer, meta={"numbers": nums, "length": length})

    def load(n: int, seed: int, split: str = "test", data_dir: str | Path | None = None) -> list[Item]:
        """``n`` sorting items of ``split``, deterministic in ``seed``."""
        return _collect(task, n, seed, split, make)

    return load


for _length in (8, 16, 32):
    for _kind, _lo in (("positive", 0), ("mixed", -99)):
        _name = f"sort{_length}_{_kind}"
        register_task(
            TaskSpec(
                name=_name,
                description=f"Sort {_length} distinct integers in {_lo}..99 ascending.",
                answer_type="list",
                load=_make_sort_loader(_name, _length, _lo, 99),
                definition=SORT_DEFINITION,
                max_new_tokens={8: 64, 16: 128, 32: 256}[_length],
                max_new_tokens_free={8: 256, 16: 384, 32: 512}[_length],
                item_marker="Sort these numbers",
                family="sorting",
            )
        )


# ------------------------------------------------------------------------------------ arithmetic

_PEOPLE = (
    ("Tom", "He"), ("Anna", "She"), ("Ben", "He"), ("Lucy", "She"), ("Sam", "He"), ("Mia", "She"),
    ("Jack", "He"), ("Emma", "She"), ("Leo", "He"), ("Sara", "She"), ("Max", "He"), ("Nina", "She"),
    ("Paul", "He"), ("Kate", "She"), ("Omar", "He"), ("Lily", "She"),
)
_FRIENDS = ("a friend", "{poss} sister", "a neighbour", "the teacher", "{poss} brother", "a classmate")
_OBJECTS = (
    "apples", "books", "marbles", "stickers", "pencils", "cookies", "coins", "cards",
    "stamps", "shells", "oranges", "balloons", "toy cars", "flowers", "candies", "eggs",
)
_ADD = ("buys {n} more", "finds {n} more", "gets {n} more from {f}", "receives {n} more", "picks up {n} more")
_SUB = ("gives away {n}", "loses {n}", "sells {n}", "gives {n} to {f}", "uses {n}")
_MUL = {2: ("doubles the number of {o}",), 3: ("triples the number of {o}",)}
_START = ("{p} has {a} {o}.", "{p} had {a} {o}.", "{p} starts with {a} {o}.", "{p} owns {a} {o}.")
_ASK = (
    "How many {o} does {p} have now?",
    "How many {o} does {p} have in the end?",
    "How many {o} are left with {p}?",
    "How many {o} does {p} have at the end?",
)


def _arith_ops(rng: random.Random, start: int) -> list[tuple[str, int]] | None:
    """2-3 operations keeping every intermediate value within 0..99."""
    value = start
    ops: list[tuple[str, int]] = []
    for _ in range(rng.choice((2, 2, 3))):
        choices = ["+", "-"] + (["*"] if value <= 33 and not any(o == "*" for o, _ in ops) else [])
        op = rng.choice(choices)
        if op == "+":
            b = rng.randint(1, min(10, 99 - value)) if value < 99 else 0
            if b == 0:
                return None
            value += b
        elif op == "-":
            if value < 1:
                return None
            b = rng.randint(1, min(10, value))
            value -= b
        else:
            b = 2 if value > 24 else rng.choice((2, 3))
            value *= b
        ops.append((op, b))
    return ops


def _make_arith(rng: random.Random, _counts: Counter[str]) -> Item | None:
    person, pron = rng.choice(_PEOPLE)
    obj = rng.choice(_OBJECTS)
    start = rng.randint(2, 20)
    ops = _arith_ops(rng, start)
    if ops is None:
        return None
    phrases = []
    for op, b in ops:
        friend = rng.choice(_FRIENDS).format(poss="his" if pron == "He" else "her")
        if op == "+":
            phrases.append(rng.choice(_ADD).format(n=b, f=friend))
        elif op == "-":
            phrases.append(rng.choice(_SUB).format(n=b, f=friend))
        else:
            phrases.append(rng.choice(_MUL[b]).format(o=obj))
    style = rng.randint(0, 1)
    if style == 0:  # one sentence: "He buys 5 more and then gives away 3."
        if len(phrases) == 2:
            body = f"{pron} {phrases[0]} and then {phrases[1]}."
        else:
            body = f"{pron} {phrases[0]}, then {phrases[1]}, and then {phrases[2]}."
    else:  # separate sentences: "He buys 5 more. Then he gives away 3."
        later = ("Then", "After that", "Later")
        body = f"{pron} {phrases[0]}."
        for i, ph in enumerate(phrases[1:]):
            body += f" {later[i]} {pron.lower()} {ph}."
    first = rng.choice(_START).format(p=person, a=start, o=obj)
    ask = rng.choice(_ASK).format(p=person, o=obj)
    question = f"Question: {first} {body} {ask}"
    value = start
    steps = []
    for op, b in ops:
        new = value + b if op == "+" else value - b if op == "-" else value * b
        steps.append(f"{value} {op} {b} = {new}.")
        value = new
    target = " ".join(steps) + f" The answer is {value}."
    return _item("synth_arith", question, str(value), target, meta={"ops": [o for o, _ in ops]})


def load_synth_arith(
    n: int, seed: int, split: str = "test", data_dir: str | Path | None = None
) -> list[Item]:
    """``n`` multi-step arithmetic word problems of ``split``."""
    return _collect("synth_arith", n, seed, split, _make_arith)


register_task(
    TaskSpec(
        name="synth_arith",
        description="Synthetic 2-3 step arithmetic word problems (+, -, x2/x3), values within 0..99.",
        answer_type="number",
        load=load_synth_arith,
        definition=ARITH_DEFINITION,
        max_new_tokens=96,
        family="math",
    )
)


# ------------------------------------------------------------------------------- multiple choice


def _distinct(rng: random.Random, k: int, lo: int, hi: int, exclude: set[int]) -> list[int]:
    pool = [v for v in range(lo, hi + 1) if v not in exclude]
    return rng.sample(pool, k)


def _mc_options(rng: random.Random, template: int) -> tuple[str, int, list[int]] | None:
    """(question head, correct value, three distractors) for one template."""
    if template in (0, 1):  # largest / smallest
        nums = rng.sample(range(100), 4)
        correct = max(nums) if template == 0 else min(nums)
        head = "Which number is the largest?" if template == 0 else "Which number is the smallest?"
        return head, correct, [v for v in nums if v != correct]
    if template in (2, 3):  # the only even / the only odd number
        parity = 0 if template == 2 else 1
        correct = rng.choice([v for v in range(100) if v % 2 == parity])
        others = rng.sample([v for v in range(100) if v % 2 != parity], 3)
        head = "Which number is even?" if template == 2 else "Which number is odd?"
        return head, correct, others
    if template == 4:  # a + b
        a, b = rng.randint(1, 50), rng.randint(1, 49)
        correct = a + b
        if correct > 99:
            return None
        near = [v for v in range(correct - 10, correct + 11) if 0 <= v <= 99 and v != correct]
        return f"Which number equals {a} + {b}?", correct, rng.sample(near, 3)
    if template == 6:  # which option shows a given number (a pure look-up)
        nums = rng.sample(range(100), 4)
        return f"Which option shows the number {nums[0]}?", nums[0], nums[1:]
    # template 5: comes right after N
    m = rng.randint(0, 98)
    correct = m + 1
    pool = [v for v in (m - 1, m, m + 2, m + 10, m - 10, m + 11) if 0 <= v <= 99 and v != correct]
    if len(pool) < 3:
        return None
    return f"Which number comes right after {m}?", correct, rng.sample(pool, 3)


def _make_mc(rng: random.Random, gold_counts: Counter[str]) -> Item | None:
    spec = _mc_options(rng, rng.randint(0, 6))
    if spec is None:
        return None
    head, correct, others = spec
    least = min(gold_counts[c] for c in LETTERS)
    gold_idx = rng.choice([i for i, c in enumerate(LETTERS) if gold_counts[c] == least])
    values = list(others)
    rng.shuffle(values)
    values.insert(gold_idx, correct)
    letter = LETTERS[gold_idx]
    question = "Question: " + head + "".join(f"\n{LETTERS[i]}. {v}" for i, v in enumerate(values))
    # The worked answer names the value, then copies the option that shows it ("77 B. 77"): the copy is
    # read off the value token itself, the one-hop look-up sorting already needs.  Naming the letter
    # a few tokens after the value ("77 is option B") stayed at chance in training (0.28 on 100 items).
    target = f"{correct} {letter}. {correct}. The answer is {letter}."
    return _item("synth_mc", question, letter, target, choices=tuple(str(v) for v in values), meta={"head": head})


def load_synth_mc(n: int, seed: int, split: str = "test", data_dir: str | Path | None = None) -> list[Item]:
    """``n`` four-option questions of ``split`` with gold letters balanced within one."""
    return _collect("synth_mc", n, seed, split, _make_mc)


register_task(
    TaskSpec(
        name="synth_mc",
        description=(
            "Four-option questions about small integers"
            " (largest, smallest, even, odd, sum, successor, look-up)."
        ),
        answer_type="letter",
        load=load_synth_mc,
        definition=MC_DEFINITION,
        max_new_tokens=16,
        family="multiple_choice",
    )
)

TRAINING_TASKS: tuple[str, ...] = (
    "sort8_positive",
    "sort8_mixed",
    "sort16_positive",
    "sort16_mixed",
    "synth_arith",
    "synth_mc",
)
