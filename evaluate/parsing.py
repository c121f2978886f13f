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


NO_ANSWER = "None"  # GSM-Plus 'critical thinking' gold: the question lacks the information to answer
_NO_ANSWER_WORD = re.compile(r"\s*(?:none|no answer|not enough information|unknown|cannot be determined)\b",
                             re.IGNORECASE)
# Phrases GSM-Plus's own scorer (scripts/utils/extract_ans.py) reads as "the question cannot be answered".
_NO_ANSWER_PHRASE = re.compile(
    r"(?:does not|doesn't|did not|didn't) (?:provide|specify|mention|say|give)|not enough information"
    r"|(?:cannot|can't|can not|impossible to) (?:be )?(?:determine|calculate|know|answer|say)"
    r"|missing (?:necessary |some )?information|insufficient information|(?:don't|do not) know",
    re.IGNORECASE,
)
_CONTINUATION = re.compile(r"(?:^|\s)(?:Question|Problem)\s*:")


def cut_continuation(text: str) -> str:
    """Drop a new exemplar the model started writing after its answer ("... 18.\\nQuestion: ...").
    A 'Question:' at the very start (the model repeating the question) is kept."""
    for m in _CONTINUATION.finditer(text):
        if text[: m.start()].strip():
            return text[: m.start()]
    return text


def _boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), braces balanced."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start == -1:
        return None
    i, depth = text.index("{", start) + 1, 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{} / \\fbox{} (a MATH reference solution's answer)."""
    return _boxed(text)


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


# --- MATH answers (LaTeX): normalised the way the MATH benchmark's own is_equiv/strip_string
# (Hendrycks et al. 2021) and Minerva's normalize_final_answer do, so scores stay comparable; written
# here because neither ships as a maintained library (math-verify would add sympy equivalence).
_TEXT_CMD = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_NUM_PART = r"(-?[\d.,]+(?:/\d+)?)"
_TEXT_UNIT_AFTER_NUMBER = re.compile(_NUM_PART + r"\s*\\(?:text|mbox|mathrm)\{\s*[A-Za-z .]+\}(?:\^\{?[23]\}?)?")
_UNITS_AFTER_NUMBER = re.compile(_NUM_PART + r"\s+(?:[A-Za-z]{2,}\.?\s*)+(?:\^\{?[23]\}?)?")


def _fix_shorthand(s: str) -> str:
    """\\frac12 -> \\frac{1}{2}, \\frac1{2} -> \\frac{1}{2}, \\sqrt3 -> \\sqrt{3}."""
    s = re.sub(r"\\frac\s*([^{\s\\])\s*([^{\s\\])", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\s*([^{\s\\])\s*\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\frac\s*(\{[^{}]*\})\s*([^{\s\\])", r"\\frac\1{\2}", s)
    return re.sub(r"\\sqrt\s*([^{\s\\\[])", r"\\sqrt{\1}", s)


def normalize_math(answer: str) -> str:
    """A canonical string for a LaTeX final answer: no $, spacing commands, \\left/\\right, \\text{},
    degrees, percent or dollar signs, units after a number, 'x =' prefixes; \\dfrac -> \\frac."""
    s = answer.strip()
    while (inner := _boxed(s)) is not None and s.startswith(("\\boxed", "\\fbox")):
        s = inner.strip()
    s = s.replace("\n", " ").strip().strip("$").strip()
    for old, new in (("\\!", ""), ("\\,", ""), ("\\;", ""), ("\\:", ""), ("\\ ", " "), ("\\left", ""),
                     ("\\right", ""), ("dfrac", "frac"), ("tfrac", "frac"), ("^{\\circ}", ""), ("^\\circ", ""),
                     ("°", ""), ("\\%", ""), ("%", ""), ("\\$", ""), ("$", ""), ("\\displaystyle", "")):
        s = s.replace(old, new)
    if (m := _TEXT_UNIT_AFTER_NUMBER.fullmatch(s)) is not None:  # "10\\text{cm}", "5\\text{ inches}^2"
        s = m.group(1)
    while _TEXT_CMD.search(s):
        s = _TEXT_CMD.sub(r"\1", s)
    s = s.strip().rstrip(".").strip()
    if (m := _UNITS_AFTER_NUMBER.fullmatch(s)) is not None:  # "10 inches", "5 cm^2", "18 dollars"
        s = m.group(1)
    if s.count("=") == 1 and len(s.split("=")[0].strip()) <= 2:  # "x = 5" -> "5"
        s = s.split("=")[1]
    s = _fix_shorthand(s).replace(" ", "")
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):  # 1,000 -> 1000
        s = s.replace(",", "")
    if s.startswith("."):
        s = "0" + s
    return s


def _math_value(s: str) -> Fraction | None:
    """The exact value of a normalised answer that is a plain number or a (signed) fraction."""
    m = re.fullmatch(r"(-?)\\frac\{(-?\d+(?:\.\d+)?)\}\{(-?\d+(?:\.\d+)?)\}", s)
    try:
        if m:
            value = Fraction(m.group(2)) / Fraction(m.group(3))
            return -value if m.group(1) else value
        if re.fullmatch(r"-?\d+(?:\.\d+)?(?:/\d+)?", s):
            return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None
    return None


def math_equal(prediction: str | None, gold: str | None) -> bool:
    """Equal after normalisation: numerically when both sides are numbers, else as strings."""
    if prediction is None or gold is None:
        return False
    a, b = normalize_math(prediction), normalize_math(gold)
    if a == b and a != "":
        return True
    va, vb = _math_value(a), _math_value(b)
    return va is not None and vb is not None and abs(va - vb) <= Fraction(1, 10**6)


def _final_expression(line: str) -> str:
    """The answer part of 'the answer is ...': a $...$ span if there is one, else the line."""
    spans = re.findall(r"\$([^$]+)\$", line)
    return spans[0] if spans else line.strip().rstrip(".")


def parse_math(output: str) -> Parsed:
    """boxed > 'the answer is' > '####' > a bare expression > (guesses) last $...$ > last number."""
    text = cut_continuation(output.strip())
    boxed = _boxed(text)
    if boxed is not None and boxed.strip():
        return Parsed(normalize_math(boxed), "boxed", True)
    for mark in reversed(list(_ANSWER_IS.finditer(text))):
        if expr := _final_expression(text[mark.end() :].split("\n")[0]):
            return Parsed(normalize_math(expr), "answer_is", True)
    hashes = re.findall(r"####\s*([^\n]+)", text)
    if hashes and hashes[-1].strip():
        return Parsed(normalize_math(hashes[-1]), "hashes", True)
    plain = text.rstrip(".").strip()
    words = re.search(r"(?<![\\A-Za-z])[A-Za-z]{3,}", plain.replace("$", ""))  # prose, not an expression
    if plain and "\n" not in plain and len(plain) <= 60 and plain.count("=") <= 1 and not words:
        return Parsed(normalize_math(plain), "bare", True)
    spans = re.findall(r"\$([^$]+)\$", text)
    if spans:
        return Parsed(normalize_math(spans[-1]), "last_math", False)
    found = _NUM.findall(text)
    if found and (n := normalize_number(found[-1])) is not None:
        return Parsed(n, "last_number", False)
    return Parsed(None, "none", False)


def _first_number(text: str) -> str | None:
    m = _NUM.search(text)
    return normalize_number(m.group()) if m else None


def parse_number(output: str) -> Parsed:
    """boxed > 'the answer is' > '####' > bare number > (guesses) 'cannot be determined' > last number.
    Explicit answers of 'None' / 'not enough information' parse as NO_ANSWER (GSM-Plus critical thinking)."""
    text = cut_continuation(output.strip()).replace("\u2212", "-")
    boxed = _boxed(text)
    if boxed is not None:
        if (n := _first_number(boxed)) is not None:
            return Parsed(n, "boxed", True)
        if _NO_ANSWER_WORD.match(boxed):
            return Parsed(NO_ANSWER, "boxed", True)
    for mark in reversed(list(_ANSWER_IS.finditer(text))):
        line = text[mark.end() :].split("\n")[0]
        if (n := _first_number(line)) is not None:
            return Parsed(n, "answer_is", True)
        if _NO_ANSWER_WORD.match(line) or _NO_ANSWER_PHRASE.search(line):
            return Parsed(NO_ANSWER, "answer_is", True)
    hashes = re.findall(r"####\s*(" + NUMBER_RE + r"|None\b)", text)
    if hashes and hashes[-1] == NO_ANSWER:
        return Parsed(NO_ANSWER, "hashes", True)
    if hashes and (n := normalize_number(hashes[-1])) is not None:
        return Parsed(n, "hashes", True)
    if re.fullmatch(NUMBER_RE + r"\.?", text) and (n := normalize_number(text)) is not None:
        return Parsed(n, "bare", True)
    if _NO_ANSWER_PHRASE.search(text):
        return Parsed(NO_ANSWER, "no_answer_phrase", False)
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


_LETTER_IS = re.compile(r"(?:answer|option|choice)\s*(?:is|:)\s*:?\s*", re.IGNORECASE)


def _norm_text(text: str) -> str:
    return re.sub(r"[\s.,;:!?\"']+", " ", text.lower()).strip()


def _choice_by_text(text: str, choices: tuple[str, ...], labels: str) -> str | None:
    """The option whose text the output gives: the whole output, or the only option (5+ characters) it
    contains as whole words."""
    out = _norm_text(text)
    normed = [_norm_text(c) for c in choices]
    exact = [i for i, c in enumerate(normed) if c and c == out]
    if len(exact) == 1:
        return labels[exact[0]]
    inside = [i for i, c in enumerate(normed) if len(c) >= 5 and re.search(rf"(?<!\w){re.escape(c)}(?!\w)", out)]
    return labels[inside[0]] if len(inside) == 1 else None


def parse_letter(output: str, choices: tuple[str, ...] = ()) -> Parsed:
    """An option letter: bare ('B', 'B.', '(B)', 'B because ...'), after 'the answer/option is', or
    (guesses) an option quoted by its text, or the last standalone valid letter.  A new 'Question:'
    the model starts after answering is cut off first."""
    labels = "ABCDEFGHIJ"[: max(len(choices), 4)]
    text = cut_continuation(output.strip()).strip()
    bare = re.fullmatch(rf"\(?([{labels}])\)?(?:[.:)\n].*)?", text, re.DOTALL)
    if bare:
        return Parsed(bare.group(1), "bare_letter", True)
    lead = re.match(rf"\(?([{labels}])\)?\s+(\S)", text)
    if lead and not (lead.group(1) in "AI" and lead.group(2).islower()):  # "A cat ...", "I think ..." are words
        return Parsed(lead.group(1), "bare_letter", True)
    lower = labels.lower()
    for mark in reversed(list(_LETTER_IS.finditer(text))):
        rest = text[mark.end() :]
        if m := re.match(rf"\(?([{labels}])\b", rest):
            return Parsed(m.group(1), "answer_is", True)
        if m := re.match(rf"\(?([{lower}])\)?\s*(?:$|[.)\n])", rest):  # "answer : b" (MathQA rationales)
            return Parsed(m.group(1).upper(), "answer_is", True)
    if choices and (by_text := _choice_by_text(text, choices, labels)) is not None:
        return Parsed(by_text, "choice_text", False)
    letters = re.findall(rf"(?<![A-Za-z])\(?([{labels}])\)?(?![A-Za-z])", text)
    if letters:
        return Parsed(letters[-1], "last_letter", False)
    return Parsed(None, "none", False)
