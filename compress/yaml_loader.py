"""Reading a recipe file so that no input can hang, exhaust or crash the reader.

A recipe is a short YAML file. What is refused here, each with the line and the fix:
files over MAX_BYTES, anything that is not a regular file, text that is not UTF-8 (UTF-16/32, Latin-1,
binary), duplicate mapping keys (YAML would keep the last one silently), nesting deeper than MAX_DEPTH,
lists or mappings of more than MAX_ITEMS entries, aliases that expand to more than ALIAS_BUDGET values
("billion laughs"), an alias inside its own anchor (a recursive structure), integers of more than
MAX_INT_DIGITS digits, and values PyYAML cannot construct (an impossible date, a bad !!float).

PyYAML's own errors (yaml.YAMLError: syntax, tabs, unknown tags) pass through unchanged; everything
found here is a YamlProblem."""

from __future__ import annotations

import codecs
import stat
from pathlib import Path
from typing import Any

import yaml
from yaml.events import (
    AliasEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
)
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_BYTES = 1_000_000  # a recipe is a few KB; the largest shipped one is under 10 KB
MAX_DEPTH = 32  # nested mappings/lists; a recipe needs about 8 (variants[0].steps[0].overrides[0].pattern)
MAX_ITEMS = 5_000  # entries of one list or mapping (recipe lists hold at most 1,000)
MAX_NODES = 50_000  # values in the whole document, aliases counted expanded (1,000 variants: ~10,000)
ALIAS_BUDGET = 10_000  # values that aliases may add by expansion
MAX_INT_DIGITS = 40

try:  # libyaml's event parser (C) when PyYAML was built with it: a 1 MB file parses in well under a second
    from yaml.cyaml import CParser as _Parser

    _C_PARSER = True
except ImportError:  # pragma: no cover - PyYAML without libyaml
    from yaml.parser import Parser as _PyParser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class _Parser(Reader, Scanner, _PyParser):  # type: ignore[no-redef]
        def __init__(self, stream: str) -> None:
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            _PyParser.__init__(self)

    _C_PARSER = False


class YamlProblem(Exception):
    """A problem with the recipe file itself: message (with the fix), 1-based line, and the path of keys
    and indices where it sits (empty for the whole file)."""

    def __init__(self, message: str, line: int | None = None, loc: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.loc = loc


def _size(n: int) -> str:
    return f"{n:,} bytes" + (f" ({n / 1e6:.1f} MB)" if n >= 1_000_000 else "")


def read_bytes(path: str | Path, max_bytes: int = MAX_BYTES) -> bytes:
    """The file's bytes; refused when it is not a regular file or larger than max_bytes (never reads more)."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise YamlProblem(f"no such file: {path}; check the path") from None
    except OSError as exc:
        raise YamlProblem(f"cannot read the recipe ({exc.strerror or exc}); check the path and its permissions") \
            from None
    if stat.S_ISDIR(st.st_mode):
        raise YamlProblem(f"{path} is a directory; name the recipe's .yaml file")
    if not stat.S_ISREG(st.st_mode):
        raise YamlProblem(f"{path} is not a regular file (a pipe or device); save the recipe to a file")
    if st.st_size > max_bytes:
        raise YamlProblem(f"the file is {_size(st.st_size)}; a recipe is at most {_size(max_bytes)} (they are a few "
                          "KB): check that this is the recipe, and remove large comments or generated lists")
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise YamlProblem(f"cannot read the recipe ({exc.strerror or exc}); check the file's permissions") from None
    if len(data) > max_bytes:  # grew while we looked
        raise YamlProblem(f"the file is over {_size(max_bytes)}; a recipe is a few KB")
    return data


_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"),
)
_SAVE_AS_UTF8 = "save the file as UTF-8 (in an editor: 'Save with encoding: UTF-8'; or iconv -f {enc} -t UTF-8)"


def decode(data: bytes) -> str:
    """UTF-8 text (a UTF-8 byte-order mark is dropped); anything else is named with its line and the fix."""
    for bom, name in _BOMS:
        if data.startswith(bom):
            raise YamlProblem(f"the file is {name} (it starts with a {name} byte-order mark), not UTF-8; "
                              + _SAVE_AS_UTF8.format(enc=name), 1)
    data = data.removeprefix(codecs.BOM_UTF8)
    nul = data.find(b"\x00")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        half = max(1, len(data) // 2)
        if max(data[0::2].count(0), data[1::2].count(0)) > 0.4 * half:
            raise YamlProblem("the file looks like UTF-16 without a byte-order mark (every other byte is 0), "
                              "not UTF-8; " + _SAVE_AS_UTF8.format(enc="UTF-16"), line)
        raise YamlProblem(f"the file holds NUL bytes (first at line {line}): it is binary, not a YAML recipe; "
                          "check that this is the recipe file", line)
    control = sum(b < 9 or 13 < b < 32 or b == 127 for b in data[:4096])
    if control > max(2, len(data[:4096]) // 100):
        raise YamlProblem(f"the file holds {control} control bytes in its first {min(len(data), 4096)}: it looks "
                          "binary, not a YAML recipe; check that this is the recipe file", 1)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        bad = data[exc.start]
        guess = ""
        try:
            data.decode("cp1252")
            guess = " (it looks like Latin-1 / Windows-1252 text)"
        except UnicodeDecodeError:
            pass
        enc = "LATIN1" if guess else "<its encoding>"
        raise YamlProblem(f"the file is not UTF-8: byte 0x{bad:02x} at line {line}, column {column} is not valid "
                          f"UTF-8{guess}; " + _SAVE_AS_UTF8.format(enc=enc), line) from None


class _Composer(yaml.composer.Composer):
    """PyYAML's composer with budgets: depth, entries per collection, total values, alias expansion;
    duplicate keys and recursive aliases are refused."""

    def __init__(self) -> None:
        super().__init__()
        self._path: list[str | int] = []
        self._weights: dict[int, int] = {}  # id(anchored node) -> values it stands for (expanded)
        self._open: set[int] = set()  # anchored collections still being composed
        self._acc: list[int] = [0]  # values composed under each open collection
        self._alias_values = 0
        self._total = 0

    def _problem(self, message: str, mark: Any) -> YamlProblem:
        return YamlProblem(message, mark.line + 1 if mark is not None else None, tuple(self._path))

    def _count(self, n: int, mark: Any) -> None:
        self._total += n
        if self._total > MAX_NODES:
            raise self._problem(f"the document holds more than {MAX_NODES:,} values (aliases counted expanded); "
                                "a recipe holds a few hundred: remove generated content", mark)

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        if self.check_event(AliasEvent):
            event = self.get_event()
            node = self.anchors.get(event.anchor)
            if node is None:
                raise yaml.composer.ComposerError(None, None, f"found undefined alias {event.anchor!r}",
                                                  event.start_mark)
            if id(node) in self._open:
                raise self._problem(f"alias *{event.anchor} sits inside its own anchor &{event.anchor} (a recursive "
                                    "structure no recipe field accepts); write the value out instead", event.start_mark)
            weight = self._weights.get(id(node), 1)
            self._alias_values += weight
            if self._alias_values > ALIAS_BUDGET:
                raise self._problem(
                    f"YAML aliases expand to more than {ALIAS_BUDGET:,} values (at *{event.anchor}, which stands for "
                    f"{weight:,}); a recipe needs a few small aliases at most: write the values out, or reuse "
                    "smaller anchors", event.start_mark)
            self._count(weight, event.start_mark)
            self._acc[-1] += weight
            return node
        event = self.peek_event()
        collection = isinstance(event, (SequenceStartEvent, MappingStartEvent))
        if collection and len(self._acc) > MAX_DEPTH:
            raise self._problem(f"nested more than {MAX_DEPTH} levels deep; a recipe needs fewer than 10: "
                                "check the brackets and indentation", event.start_mark)
        self._count(1, event.start_mark)
        self._acc.append(0)
        try:
            node = super().compose_node(parent, index)
        finally:
            inner = self._acc.pop()
        weight = 1 + inner
        self._acc[-1] += weight
        if event.anchor is not None:
            self._weights[id(node)] = weight
            self._open.discard(id(node))
        return node

    def compose_sequence_node(self, anchor: str | None) -> SequenceNode:
        start = self.get_event()
        tag = start.tag
        if tag is None or tag == "!":
            tag = self.resolve(SequenceNode, None, start.implicit)
        node = SequenceNode(tag, [], start.start_mark, None, flow_style=start.flow_style)
        if anchor is not None:
            self.anchors[anchor] = node
            self._open.add(id(node))
        index = 0
        while not self.check_event(SequenceEndEvent):
            if index >= MAX_ITEMS:
                raise self._problem(f"a list of more than {MAX_ITEMS:,} items; recipe lists are far shorter "
                                    "(at most 1,000 variants or tasks): split the study", start.start_mark)
            self._path.append(index)
            try:
                node.value.append(self.compose_node(node, index))
            finally:
                self._path.pop()
            index += 1
        node.end_mark = self.get_event().end_mark
        return node

    def compose_mapping_node(self, anchor: str | None) -> MappingNode:
        start = self.get_event()
        tag = start.tag
        if tag is None or tag == "!":
            tag = self.resolve(MappingNode, None, start.implicit)
        node = MappingNode(tag, [], start.start_mark, None, flow_style=start.flow_style)
        if anchor is not None:
            self.anchors[anchor] = node
            self._open.add(id(node))
        seen: dict[tuple[str, str], Any] = {}
        while not self.check_event(MappingEndEvent):
            if len(node.value) >= MAX_ITEMS:
                raise self._problem(f"a mapping of more than {MAX_ITEMS:,} keys; a recipe section has a few: "
                                    "remove generated content", start.start_mark)
            key_event = self.peek_event()
            key = self.compose_node(node, None)
            label: str | int = "<key>"
            if isinstance(key, ScalarNode) and isinstance(key_event, ScalarEvent):
                label = key.value
                ident = (key.tag, key.value)
                if ident in seen and key.tag != "tag:yaml.org,2002:merge":
                    first = seen[ident].line + 1
                    self._path.append(key.value)
                    raise self._problem(
                        f"duplicate key {_short(key.value)!r} (first at line {first}, again at line "
                        f"{key.start_mark.line + 1}); YAML would keep only the last one: remove or merge one of "
                        "them", key.start_mark)
                seen[ident] = key.start_mark
            self._path.append(label)
            try:
                value = self.compose_node(node, key)
            finally:
                self._path.pop()
            node.value.append((key, value))
        node.end_mark = self.get_event().end_mark
        return node


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


class _Constructor(yaml.constructor.SafeConstructor):
    """SafeConstructor that bounds integers and names the line of any value it cannot build."""

    def construct_yaml_int(self, node: ScalarNode) -> int:
        digits = str(node.value).replace("_", "").lstrip("+-")
        if len(digits) > MAX_INT_DIGITS:
            raise yaml.constructor.ConstructorError(
                None, None, f"an integer of {len(digits)} digits; no recipe field takes a number this large",
                node.start_mark)
        return super().construct_yaml_int(node)

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (yaml.YAMLError, YamlProblem):
            raise
        except Exception as exc:  # an impossible date (2024-02-30), !!float on text, ...: PyYAML's own bugs
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read this {node.tag.rsplit(':', 1)[-1]} value ({exc}); write it as plain text "
                "in quotes or fix the value", node.start_mark) from None


_Constructor.add_constructor("tag:yaml.org,2002:int", _Constructor.construct_yaml_int)


class RecipeLoader(_Composer, _Parser, _Constructor, yaml.resolver.Resolver):
    """A PyYAML loader (safe tags only) with the limits above; libyaml's parser when available."""

    def __init__(self, stream: str) -> None:
        _Parser.__init__(self, stream)
        _Composer.__init__(self)
        _Constructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)


def compose_and_construct(text: str) -> tuple[Any, Node | None]:
    """(data, root node) of a single-document YAML text, with every limit applied."""
    loader = RecipeLoader(text)
    try:
        root = loader.get_single_node()
        try:
            data = loader.construct_document(root) if root is not None else None
        except yaml.constructor.ConstructorError as exc:  # name the field: the tree is complete by now
            mark = exc.problem_mark
            loc = loc_of_mark(root, mark) if mark is not None else None
            if loc is None:
                raise
            raise YamlProblem(f"{exc.problem}", mark.line + 1, loc) from None
    finally:
        loader.dispose()
    return data, root


def loc_of_mark(root: Node | None, mark: Any) -> tuple[str | int, ...] | None:
    """The key/index path of the node that starts at `mark` (each node visited once, aliases included)."""
    seen: set[int] = set()
    stack: list[tuple[Node, tuple[str | int, ...]]] = [(root, ())] if root is not None else []
    while stack:
        node, loc = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.start_mark.index == mark.index and node.start_mark.line == mark.line:
            return loc
        if isinstance(node, SequenceNode):
            stack.extend((child, (*loc, i)) for i, child in enumerate(node.value))
        elif isinstance(node, MappingNode):
            for key, value in node.value:
                label = key.value if isinstance(key, ScalarNode) else "<key>"
                stack.append((value, (*loc, label)))
                stack.append((key, (*loc, label)))
    return None


def load_file(path: str | Path, max_bytes: int = MAX_BYTES) -> tuple[Any, Node | None]:
    """Read, decode and load a recipe file: (data, root node). Raises YamlProblem or yaml.YAMLError."""
    return compose_and_construct(decode(read_bytes(path, max_bytes)))


def keys_near_line(text: str | None, line: int | None) -> str | None:
    """The block keys enclosing a 1-based line ('variants.steps.method'), read from indentation: a hint for a
    syntax error, where no tree exists to give the exact path. None when nothing encloses it."""
    import re

    if not text or not line:
        return None
    lines = text.splitlines()[:line]
    if not lines:
        return None
    pattern = re.compile(r"^(\s*)(?:-\s+)*([\w.-]+)\s*:(?:\s|$)")
    keys: list[str] = []
    limit = None
    for raw in reversed(lines[-2000:]):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        match = pattern.match(raw)
        indent = len(raw) - len(raw.lstrip(" -"))
        if match and (limit is None or indent < limit):
            keys.append(match.group(2))
            limit = indent
        elif limit is None:
            limit = indent + 1
        if limit == 0:
            break
    return ".".join(reversed(keys)) or None


def reader_error_line(exc: yaml.YAMLError, text: str | None) -> int | None:
    """1-based line of a YAML error: its mark, or for a ReaderError (a control character) its position."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is not None:
        return mark.line + 1
    position = getattr(exc, "position", None)
    if isinstance(position, int) and text is not None:
        return text.count("\n", 0, position) + 1
    return None


__all__ = ["ALIAS_BUDGET", "MAX_BYTES", "MAX_DEPTH", "MAX_ITEMS", "RecipeLoader", "YamlProblem",
           "compose_and_construct", "decode", "load_file", "read_bytes", "reader_error_line"]
