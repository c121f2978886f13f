"""Answer extraction as an ordered cascade of rules.

Each parse records which rule matched and whether the output followed the requested format
(`followed`), so a format failure is told apart from a wrong answer. Rules that only guess
(last number anywhere, a letter buried in prose) give an answer but `followed=False`.
"""

from __future__ import annotations

import re
from collections import Counter
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


_BOLD = re.compile(r"\*\*(?=\S)([^*\n]+?)(?<=\S)\*\*|(?<!\w)__(?=\S)([^_\n]+?)(?<=\S)__(?!\w)")
_ITALIC = re.compile(r"(?<![\w*\\])\*(?=[^\s*])([^*\n]+?)(?<=[^\s*\\])\*(?![\w*])")
# a markdown heading mark ('### Final answer: 42'); GSM8K's '#### 42' / '#### None' is an answer, not a heading
_HEADING = re.compile(r"^[ \t]*#{1,6}[ \t]+(?![-$\d.]|None\b)", re.MULTILINE)


def strip_markdown(text: str) -> str:
    """Text without markdown emphasis (**bold**, __bold__, *italic*) and heading marks; '15 * 38', '#### 72',
    bullets and LaTeX are left alone."""
    text = _BOLD.sub(lambda m: m.group(1) or m.group(2), text)
    text = _ITALIC.sub(r"\1", text)
    return _HEADING.sub("", text)


def _bold_spans(text: str) -> list[str]:
    """The contents of every **bold** / __bold__ span, in order."""
    return [m.group(1) or m.group(2) for m in _BOLD.finditer(text)]


def _line_at(text: str, start: int) -> str:
    """The text from `start` to the end of its line."""
    stop = text.find("\n", start)
    return text[start:] if stop == -1 else text[start:stop]


def _answer_line(text: str, mark: re.Match[str]) -> str:
    """What follows an answer mark: the rest of its line or, when the mark ends its line ('The final answer
    is:\\n\\n42'), the next non-empty line if that starts with the answer ('42', '$18', '$x^2$', '\\(...\\)'),
    not with a new paragraph of prose ('To find the answer:\\n\\nFirst, we add 3 + 4')."""
    line = _line_at(text, mark.end())
    if "\n" in mark.group():  # the mark's own spaces ran on to a later line: that line
        following = line
    elif line.strip(" \t:*") or text.find("\n", mark.end()) == -1:
        return line
    else:
        nonblank = re.compile(r"\n[ \t]*(?=\S)").search(text, mark.end())
        following = _line_at(text, nonblank.end()) if nonblank else ""
    return following if re.match(r"\s*(?:[-+$(\[\\]|\d)", following) or _NO_ANSWER_WORD.match(following) else ""


def _answer_marks(text: str, pattern: re.Pattern[str]) -> list[re.Match[str]]:
    """The answer marks of `text`, last first, without a final mark that is a cut-off copy of a line the model
    kept repeating: a model looping on 'The answer is 0.8 feet.' that hits the token limit at 'The answer is 0.'"""
    marks = list(pattern.finditer(text))
    if len(marks) > 2:
        last = text[marks[-1].end() :].strip()
        if "\n" not in last:
            rests = [_line_at(text, m.end()).strip() for m in marks[:-1]]
            if max(Counter(r for r in rests if r != last and r.startswith(last)).values(), default=0) >= 2:
                marks = marks[:-1]
    return marks[::-1]


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
    """The answer part of 'the answer is ...': a $...$ span if there is one, else the line. An arithmetic
    equation ('$1-2+3 = 2$') gives its result; an equation in variables ('x^2+y^2=25') stays whole."""
    spans = re.findall(r"\$([^$]+)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", line)  # $...$, \\(...\\), \\[...\\]
    expr = next(g for g in spans[0] if g) if spans else line.strip().rstrip(".")
    lhs, eq, rhs = expr.rpartition("=")
    if eq and rhs.strip() and re.search(r"\d", lhs) and not re.search(r"[A-Za-z]", re.sub(r"\\[A-Za-z]+", "", lhs)):
        return rhs.strip().rstrip(".")
    return expr


def parse_math(output: str) -> Parsed:
    """boxed > 'the answer is' > '####' > a bare expression > (guesses) last $...$ > last number."""
    text = cut_continuation(output.strip())
    boxed = _boxed(text)
    if boxed is not None and boxed.strip():
        return Parsed(normalize_math(boxed), "boxed", True)
    text = strip_markdown(text)
    for mark in _answer_marks(text, _ANSWER_IS):
        if expr := _final_expression(_answer_line(text, mark)):
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


_SENTENCE_END = re.compile(r"(?<!\d)\.(?!\d)|[!?;]|\n")
_CLAUSE_WORD = re.compile(r"\b(?:because|since|as|so|and|but|which|if|when|than|then|not)\b", re.IGNORECASE)


def _sentence(text: str) -> str:
    """`text` up to the end of its first sentence (a period that is not a decimal point, or a line end)."""
    m = _SENTENCE_END.search(text)
    return text[: m.start()] if m else text


def _after_last_equals(sentence: str) -> str | None:
    """The first number after the last '=' of a sentence ('2 + 3 = 5 apples' -> '5')."""
    if "=" not in sentence:
        return None
    return _first_number(sentence.rpartition("=")[2])


def _answer_number(segment: str) -> str | None:
    """The number an 'answer is' gives: its first number, or the result when the answer is written as a
    calculation ('The answer is 18 + 36 = 54 hours' -> '54'); a later clause ('8, since 2 + 3 = 5') is not
    the answer."""
    sentence = _sentence(segment)
    lhs = sentence.rpartition("=")[0]
    calculation = re.match(r"[\s:$(]*-?\d", lhs) and re.search(r"[-+*/×÷]|\sx\s", lhs) and not _CLAUSE_WORD.search(lhs)
    if calculation and (n := _after_last_equals(sentence)) is not None:
        return n
    return _first_number(segment)


# a bold span that is a number ('**18**', '**$18.00**', '**18 eggs**', '**Total: $18**', '**9 * 2 = 18**')
_BOLD_NUMBER = re.compile(r"(?:[^\n]{0,60}?[:=]\s*)?(?:about\s+|approximately\s+)?(" + NUMBER_RE + r")"
                          r"(?:\s*(?:%|[A-Za-z]+)){0,3}\s*[.!]?", re.IGNORECASE)
# the opening of a concluding sentence ('So, Terry spends $24 on yogurt over 30 days.')
_CONCLUSION = re.compile(r"(?:So|Therefore|Thus|Hence|In total|In conclusion|Overall|Altogether|Finally)\b,?\s+")
_COPULA_NUMBER = re.compile(r"\b(?:is|are|was|were|equals?|be|becomes|totals?|comes to)\s+(?:a total of\s+|about\s+)?("
                            + NUMBER_RE + r")", re.IGNORECASE)


def _final_sentence(text: str) -> str:
    """The last sentence of the last non-empty line."""
    lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
    if not lines:
        return ""
    parts = [p for p in re.split(r"(?<=[^\d\s][.!?])\s+|(?<=\d[.!?])\s+(?=[A-Z])", lines[-1]) if p.strip()]
    return parts[-1] if parts else ""


def _conclusion_number(text: str) -> str | None:
    """The number a final 'So, ... / Therefore, ...' sentence states: the result of its last equation, else the
    number after its verb ('is 11'), else its first number ('Terry spends $24 on yogurt over 30 days')."""
    sentence = _final_sentence(text)
    if not _CONCLUSION.match(sentence):
        return None
    if (n := _after_last_equals(sentence)) is not None:
        return n
    copulas = list(_COPULA_NUMBER.finditer(sentence))
    if copulas:
        return normalize_number(copulas[-1].group(1))
    return _first_number(sentence)


def _last_equation_number(text: str) -> str | None:
    """The result of the last equation of the final sentence when more numbers follow it there ('... = 8
    apples for 2 kids' -> '8'); when the result is the last number, last_number reads the same."""
    sentence = _final_sentence(text)
    if "=" not in sentence:
        return None
    after = sentence.rpartition("=")[2]
    found = _NUM.findall(after)
    return normalize_number(found[0]) if len(found) > 1 else None


def parse_number(output: str) -> Parsed:
    """boxed > 'the answer is' > '####' > bare number > (guesses) a bold number > a concluding sentence >
    'cannot be determined' > the last equation > the last number. Markdown emphasis and headings are read
    through ('**Answer:** 42', '### Final answer: 42'). Explicit answers of 'None' / 'not enough information'
    parse as NO_ANSWER (GSM-Plus critical thinking)."""
    raw = cut_continuation(output.strip()).replace("\u2212", "-")
    boxed = _boxed(raw)
    if boxed is not None:
        if (n := _first_number(boxed)) is not None:
            return Parsed(n, "boxed", True)
        if _NO_ANSWER_WORD.match(boxed):
            return Parsed(NO_ANSWER, "boxed", True)
    text = strip_markdown(raw)
    for mark in _answer_marks(text, _ANSWER_IS):
        line = _answer_line(text, mark)
        if (n := _answer_number(line)) is not None:
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
    last_line = next((ln for ln in reversed(raw.split("\n")) if ln.strip()), "")
    for span in reversed(_bold_spans(last_line)):  # a final '**42**' (not a bold step number '**2.**')
        if ((m := _BOLD_NUMBER.fullmatch(span.strip())) and not re.fullmatch(r"\d+[.)]", span.strip())
                and (n := normalize_number(m.group(1))) is not None):
            return Parsed(n, "bold", False)
    if (n := _conclusion_number(text)) is not None:
        return Parsed(n, "conclusion", False)
    if _NO_ANSWER_PHRASE.search(text):
        return Parsed(NO_ANSWER, "no_answer_phrase", False)
    if (n := _last_equation_number(text)) is not None:
        return Parsed(n, "last_equation", False)
    found = _NUM.findall(text)
    if found and (n := normalize_number(found[-1])) is not None:
        return Parsed(n, "last_number", False)
    return Parsed(None, "none", False)


def format_list(values: list[int]) -> str:
    return ", ".join(str(v) for v in values)


_INT_LIST = r"-?\d+(?:\s*,\s*-?\d+)*"  # '3, 12, -5'
_CODE_BLOCK = re.compile(r"```.*?(?:```|$)", re.DOTALL)
# '[3, 12, 21]' (not an index such as x[0]) and its contents
_BRACKET = re.compile(r"(?<![\w\])])\[\s*(-?\d+(?:(?:\s*[,;]\s*|\s+)-?\d+)*)\s*,?\s*\]")
# a line that is only a comma list, possibly in backticks or parentheses, with a final period
_LIST_LINE = re.compile(r"^[ \t`(]*(" + _INT_LIST + r")[ \t]*[.)`]*[ \t]*$", re.MULTILINE)
# numbered or bulleted lines holding one integer each ('1. 3', '- 12', '* 21', '• 45')
_ITEM_LINE = re.compile(r"^[ \t]*(?:\d+[.)]|[-*•+])[ \t]+(-?\d+)[ \t]*[.,;]?[ \t]*$", re.MULTILINE)
# three or more integers in a row inside a sentence ('The sorted list is: 3, 12, 21 and 45.')
_LIST_IN_TEXT = re.compile(r"(?<![\w.])-?\d+(?:\s*,\s*(?:and\s+)?-?\d+)+(?:\s*,?\s+and\s+-?\d+)?(?![\w.]\d)")


def _ints(text: str) -> list[int]:
    return [int(x) for x in _INT.findall(text)]


def _list_candidates(text: str) -> list[tuple[int, int, list[int], str, bool]]:
    """Every list the text states, as (start, end, values, rule, followed); a list that a more explicit
    form (brackets, 'answer is', its own line) already covers is not counted again as a list in prose."""
    found: list[tuple[int, int, list[int], str, bool]] = []

    def add(start: int, end: int, values: list[int], rule: str, followed: bool) -> None:
        if values and not any(s < end and start < e for s, e, *_ in found):
            found.append((start, end, values, rule, followed))

    for m in _BRACKET.finditer(text):
        add(m.start(), m.end(), _ints(m.group(1)), "bracketed", True)
    for mark in _answer_marks(text, _ANSWER_IS):
        line = _answer_line(text, mark)
        start = text.find(line, mark.end()) if line else mark.end()
        if len(ints := _ints(line)) >= 2 or (ints and not found):
            add(start, start + len(line), ints, "answer_is", True)
    for m in _LIST_LINE.finditer(text):
        first = not text[: m.start()].strip()
        if len(ints := _ints(m.group(1))) >= 2 or first:  # a lone number is a list only as the whole first line
            add(m.start(1), m.end(1), ints, "bare_list" if first else "list_line", True)
    run: list[re.Match[str]] = []
    for m in [*_ITEM_LINE.finditer(text), None]:  # runs of consecutive item lines
        if m is not None and run and text[run[-1].end() : m.start()].strip() == "":
            run.append(m)
            continue
        if len(run) >= 2:
            add(run[0].start(), run[-1].end(), [int(r.group(1)) for r in run], "list_items", False)
        run = [m] if m is not None else []
    for m in _LIST_IN_TEXT.finditer(text):
        if len(ints := _ints(m.group())) >= 3:
            add(m.start(), m.end(), ints, "list_in_text", False)
    return sorted(found)


_LIST_PRIORITY = ("bracketed", "answer_is", "bare_list", "list_line", "list_items", "list_in_text")


def parse_int_list(output: str, expected_len: int | None = None) -> Parsed:
    """A list of integers: the last complete list (of `expected_len` values) the output states: bracketed,
    after 'the answer is', a comma list on its own line, numbered or bulleted lines, or (a guess) a list inside a
    sentence. Without a complete one: the most explicit list, else (a guess) every integer on the first line.
    Lists inside ``` code blocks (usually the input, echoed into a program) count only when there is no other."""
    text = cut_continuation(strip_markdown(output.strip()))
    prose = _CODE_BLOCK.sub(lambda m: " " * len(m.group()), text)
    for source, in_code in ((prose, False), (text, True)):
        candidates = _list_candidates(source)
        if not candidates:
            continue
        complete = [c for c in candidates if expected_len is None or len(c[2]) == expected_len]
        if complete:
            _, _, values, rule, followed = complete[-1]
        else:
            best = min(_LIST_PRIORITY.index(c[3]) for c in candidates)
            _, _, values, rule, followed = [c for c in candidates if _LIST_PRIORITY.index(c[3]) == best][-1]
        if in_code:
            rule, followed = "list_in_code", False
        return Parsed(format_list(values), rule, followed)
    first_line = text.split("\n")[0].strip().rstrip(".")
    ints = _INT.findall(first_line)
    if ints:
        if expected_len is not None and len(ints) > expected_len:
            ints = ints[-expected_len:]
        return Parsed(format_list([int(x) for x in ints]), "integers_in_text", False)
    return Parsed(None, "none", False)


_LETTER_IS = re.compile(r"(?:answer|option|choice)\s*(?:is|:)\s*:?\s*(?:(?:option|choice|letter)\s+)?", re.IGNORECASE)


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


def _restated_options(text: str, choices: tuple[str, ...], labels: str) -> set[str]:
    """The letters of the options the output restates on lines of their own, letter and text ('C. Paris')."""
    said = set()
    for m in re.finditer(rf"^[ \t]*\(?([{labels}])[.):][ \t]+(.+?)[ \t]*$", text, re.MULTILINE):
        i = labels.index(m.group(1))
        if i < len(choices) and _norm_text(m.group(2)) == _norm_text(choices[i]):
            said.add(m.group(1))
    return said


def parse_letter(output: str, choices: tuple[str, ...] = ()) -> Parsed:
    """An option letter: after the last 'the answer/option is' ('The correct answer is (B)', 'Answer: B)', 'the
    answer is option C'), bare ('B', 'B.', '(B)', 'B because ...', '**B. Paris**'), or (guesses) a bold letter,
    an option restated by letter and text on its own line, an option quoted by its text, or the last standalone
    valid letter. Markdown emphasis is read through; a new 'Question:' the model starts after answering is cut off
    first. An 'answer is' after a leading letter wins: the model corrected itself ('A. 6 ... The correct answer
    is D. 4.')."""
    labels = "ABCDEFGHIJ"[: max(len(choices), 4)]
    raw = cut_continuation(output.strip()).strip()
    text = strip_markdown(raw)
    lower = labels.lower()
    for mark in _answer_marks(text, _LETTER_IS):
        rest = text[mark.end() :]
        if m := re.match(rf"\(?([{labels}])\b", rest):
            return Parsed(m.group(1), "answer_is", True)
        if m := re.match(rf"\(?([{lower}])\)?\s*(?:$|[.)\n])", rest):  # "answer : b" (MathQA rationales)
            return Parsed(m.group(1).upper(), "answer_is", True)
    restated = _restated_options(text, choices, labels)
    echo = len(restated) >= 3  # the question's options written back ('A. Berlin\nB. Madrid\n...'): no answer
    bare = re.fullmatch(rf"\(?([{labels}])\)?(?:[.:)\n].*)?", text, re.DOTALL)
    if bare and not echo:
        return Parsed(bare.group(1), "bare_letter", True)
    lead = re.match(rf"\(?([{labels}])\)?\s+(\S)", text)
    if lead and not echo and not (lead.group(1) in "AI" and lead.group(2).islower()):  # "A cat", "I think"
        return Parsed(lead.group(1), "bare_letter", True)
    option = re.compile(rf"\(?([{labels}])\)?(?:[.:)]\s*.*)?")
    bold = {m.group(1) for span in _bold_spans(raw) if (m := option.fullmatch(span.strip()))}
    if len(bold) == 1:  # one option in bold ('... so it is **C. Paris**'), not a bolded list of options
        return Parsed(bold.pop(), "bold", False)
    if len(restated) == 1:  # one option restated after some prose ('The capital is Paris.\n\nC. Paris')
        return Parsed(restated.pop(), "choice_line", False)
    if choices and (by_text := _choice_by_text(text, choices, labels)) is not None:
        return Parsed(by_text, "choice_text", False)
    letters = re.findall(rf"(?<![A-Za-z])\(?([{labels}])\)?(?![A-Za-z])", text)
    if letters:
        return Parsed(letters[-1], "last_letter", False)
    return Parsed(None, "none", False)
