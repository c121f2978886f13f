"""Answer extraction as an ordered cascade of rules.

Each parse records which rule matched and whether the output followed the requested format
(`followed`), so a format failure is told apart from a wrong answer. Rules that only guess
(last number anywhere, a letter buried in prose) give an answer but `followed=False`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

NUMBER_RE = r"-?\$?\s?\d[\d,]*(?:\.\d+)?(?:/\d+)?"
_NUM = re.compile(NUMBER_RE)
_INT = re.compile(r"-?\d+")
_ANSWER_IS = re.compile(r"(?:the\s+)?(?:final\s+)?answer\s*(?:is|:)\s*:?\s*", re.IGNORECASE)


@dataclass(frozen=True)
class Parsed:
    answer: str | None  # canonical form, comparable to the gold answer
    rule: str  # which rule of the cascade matched ("none" when nothing did)
    followed: bool  # the output used the answer format the prompt asked for


def _boxed(text: str) -> str | None:
    """Content of the last \\boxed{...}, braces balanced."""
    start = text.rfind("\\boxed{")
    if start == -1:
        return None
    i, depth = start + len("\\boxed{"), 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None


def normalize_number(raw: str) -> str | None:
    """'1,234.0' -> '1234', '$5' -> '5', '3/4' -> '3/4', '0.50' -> '1/2'... canonical exact value."""
    s = raw.replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    try:
        value = Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None
    if value.denominator == 1:
        return str(value.numerator)
    return f"{value.numerator}/{value.denominator}"


def numbers_equal(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return False
    na, nb = normalize_number(a), normalize_number(b)
    if na is None or nb is None:
        return False
    return abs(Fraction(na) - Fraction(nb)) <= Fraction(1, 10**6)


def _first_number(text: str) -> str | None:
    m = _NUM.search(text)
    return normalize_number(m.group()) if m else None


def parse_number(output: str) -> Parsed:
    text = output.strip()
    boxed = _boxed(text)
    if boxed is not None and (n := _first_number(boxed)) is not None:
        return Parsed(n, "boxed", True)
    for mark in reversed(list(_ANSWER_IS.finditer(text))):
        if (n := _first_number(text[mark.end() :].split("\n")[0])) is not None:
            return Parsed(n, "answer_is", True)
    hashes = re.findall(r"####\s*(" + NUMBER_RE + ")", text)
    if hashes and (n := normalize_number(hashes[-1])) is not None:
        return Parsed(n, "hashes", True)
    if re.fullmatch(NUMBER_RE + r"\.?", text) and (n := normalize_number(text)) is not None:
        return Parsed(n, "bare", True)
    found = _NUM.findall(text)
    if found and (n := normalize_number(found[-1])) is not None:
        return Parsed(n, "last_number", False)
    return Parsed(None, "none", False)


def format_list(values: list[int]) -> str:
    return ", ".join(str(v) for v in values)


def parse_int_list(output: str, expected_len: int | None = None) -> Parsed:
    """A list of integers: bracketed, after 'the answer is', a bare comma list, or (fallback) every
    integer on the first line."""
    text = output.strip()
    bracket = re.findall(r"\[([^\[\]]*)\]", text)
    if bracket:
        return Parsed(format_list([int(x) for x in _INT.findall(bracket[-1])]), "bracketed", True)
    for mark in reversed(list(_ANSWER_IS.finditer(text))):
        if ints := _INT.findall(text[mark.end() :].split("\n")[0]):
            return Parsed(format_list([int(x) for x in ints]), "answer_is", True)
    first_line = text.split("\n")[0].strip().rstrip(".")
    if re.fullmatch(r"-?\d+(?:\s*,\s*-?\d+)*", first_line):
        return Parsed(format_list([int(x) for x in _INT.findall(first_line)]), "bare_list", True)
    ints = _INT.findall(first_line)
    if ints:
        if expected_len is not None and len(ints) > expected_len:
            ints = ints[-expected_len:]
        return Parsed(format_list([int(x) for x in ints]), "integers_in_text", False)
    return Parsed(None, "none", False)


def parse_letter(output: str, choices: tuple[str, ...] = ()) -> Parsed:
    """An option letter: bare ('B', 'B.', '(B)'), after 'the answer is', or (fallback) the last
    standalone valid letter, or an option quoted by its text."""
    labels = "ABCDEFGHIJ"[: max(len(choices), 4)]
    text = output.strip()
    bare = re.fullmatch(rf"\(?([{labels}])\)?(?:[.:)].*)?", text, re.DOTALL)
    if bare:
        return Parsed(bare.group(1), "bare_letter", True)
    for mark in reversed(list(_ANSWER_IS.finditer(text))):
        if m := re.match(rf"\(?([{labels}])\b", text[mark.end() :]):
            return Parsed(m.group(1), "answer_is", True)
    letters = re.findall(rf"(?<![A-Za-z])\(?([{labels}])\)?(?![A-Za-z])", text)
    if letters:
        return Parsed(letters[-1], "last_letter", False)
    for i, choice in enumerate(choices):
        if choice and choice.strip().lower() == text.lower().rstrip("."):
            return Parsed(labels[i], "choice_text", False)
    return Parsed(None, "none", False)
