"""YAML reading that remembers where every value came from and refuses YAML's traps.

- Every mapping key and value has a `(line, col)` (1-based) so errors point at `file:line:col`.
- Duplicate keys in a mapping are an error (PyYAML silently keeps the last one).
- Only `true`/`false` are booleans (YAML 1.2 core schema): `on`, `yes`, `no`, `off` stay strings,
  so `country: no` does not become `False`. Timestamps stay strings; the schema parses them.
- Numbers follow YAML 1.2 (`1.10` is still a float: where a string is expected the schema rejects
  it with a hint to quote it, instead of silently turning it into "1.1").

Speed: documents are composed by libyaml (PyYAML's C parser) when it is installed, and positions
are not tabulated while building: `where()` walks the composed nodes, which a stream keeps only
while its file is parsed (then composes its packed text again, once, if a position is asked later).
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

Path_ = tuple[str | int, ...]

_INT = re.compile(r"^[-+]?(0|[1-9][0-9_]*)$|^0o[0-7]+$|^0x[0-9a-fA-F]+$")
_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9][0-9_]*(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")
_SPECIAL_FLOAT = {".inf": float("inf"), "+.inf": float("inf"), "-.inf": float("-inf"), ".nan": float("nan")}
_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"

#: Most values one document may expand to. Aliases are resolved by copying, so a few lines of
#: nested aliases ("billion laughs") would otherwise expand to billions of values and never end;
#: a real manifest has a few hundred.
MAX_VALUES = 50_000


_Base: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
#: PyYAML's implicit resolvers by first character ('' for the empty scalar); none are wildcards
_RESOLVERS: dict[str, tuple[tuple[str, re.Pattern[str]], ...]] = {
    first: tuple(found) for first, found in _Base.yaml_implicit_resolvers.items()
}
_SEQ, _MAP = "tag:yaml.org,2002:seq", "tag:yaml.org,2002:map"


class _Loader(_Base):  # type: ignore[valid-type,misc]
    """libyaml's SafeLoader (the pure-Python one without libyaml), only used to compose nodes:
    aliases still resolve, no Python objects. Its plain scalars have style '' (Python's: None)."""

    def resolve(self, kind: type[Node], value: str | None, implicit: tuple[bool, bool]) -> str:
        """`Resolver.resolve`'s tags, without its path resolvers (none are registered): it runs
        for every node, and composing is most of `validate`'s time."""
        if kind is ScalarNode:
            if implicit[0] and value is not None:
                for tag, regexp in _RESOLVERS.get(value[:1], ()):
                    if regexp.match(value):
                        return tag
            return _STR
        return _SEQ if kind is SequenceNode else _MAP

    def descend_resolver(self, current_node: Node | None, current_index: Any) -> None:
        """Nothing to track without path resolvers."""

    def ascend_resolver(self) -> None:
        """Nothing to track without path resolvers."""


class YamlError(Exception):
    def __init__(self, line: int, col: int, message: str) -> None:
        self.line, self.col, self.message = line, col, message
        super().__init__(message)


def _compose(text: str) -> list[Node]:
    """Every document's root node; YamlError with the position of the first syntax error."""
    try:
        return [node for node in yaml.compose_all(text, Loader=_Loader) if node is not None]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        problem = exc.problem or exc.context or "invalid YAML"
        if "maximum nesting depth" in problem:
            problem = f"nested too deeply ({problem})"
        raise YamlError(line, col, f"invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:  # e.g. reader errors on control characters
        raise YamlError(0, 0, f"invalid YAML: {exc}") from None
    except RecursionError:
        raise YamlError(0, 0, "invalid YAML: nested too deeply") from None


class _Stream:
    """The text of a file's documents and, while it is parsed, their composed nodes.

    Once released, the text is kept compressed (a daemon holds every file's parse for as long as
    it runs, and manifests repeat themselves: about a thirtieth of the text): a position or a
    document's data asked later is composed again from it, once, until the next release."""

    __slots__ = ("packed", "roots", "text")

    def __init__(self, text: str, roots: list[Node] | None) -> None:
        self.text: str | None = text
        self.packed: bytes | None = None
        self.roots = roots

    def root(self, index: int) -> Node:
        if self.roots is None:
            self.roots = _compose(self._text())
        return self.roots[index]

    def _text(self) -> str:
        if self.text is not None:
            return self.text
        assert self.packed is not None
        return zlib.decompress(self.packed).decode("utf-8")

    def release(self) -> None:
        if self.text is not None:
            self.packed = zlib.compress(self.text.encode("utf-8"), 1)
            self.text = None
        self.roots = None


def _mark(node: Node) -> tuple[int, int]:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


@dataclass(eq=False, slots=True)
class YamlDocument:
    """One `---` document: its data, and the position of every path inside it (from the nodes of
    its stream, composed again after a release when asked)."""

    data: Any
    line: int
    #: problems found while building that do not stop the rest of the document (duplicate keys)
    problems: list[YamlError] = field(default_factory=list)
    _stream: _Stream | None = field(default=None, repr=False)
    _index: int = 0

    def _walk(self, path: Path_) -> tuple[tuple[int, int], Node | None]:
        """The position of the longest known prefix of `path` (a key's, or an item's), and the
        node at `path` (None when the document has no such path)."""
        if self._stream is None:
            return (self.line, 1), None
        node: Node = self._stream.root(self._index)
        pos = _mark(node)
        found: Node | None = node
        for step in path:
            found = None
            if isinstance(node, MappingNode) and isinstance(step, str):
                for key_node, value_node in node.value:  # the first of duplicate keys, as built
                    if key_node.value == step and isinstance(key_node, ScalarNode):
                        pos, found = _mark(key_node), value_node
                        break
            elif isinstance(node, SequenceNode) and isinstance(step, int) and 0 <= step < len(node.value):
                found = node.value[step]
                pos = _mark(found)
            if found is None:
                break
            node = found
        return pos, found

    def where(self, path: Path_) -> tuple[int, int]:
        """Position of the longest prefix of `path` that is known."""
        return self._walk(tuple(path))[0]

    def plain_scalar(self, path: Path_) -> str | None:
        """The source text of the unquoted scalar at `path` when YAML read it as no string (a
        number, a boolean: for "quote it" hints), else None."""
        node = self._walk(tuple(path))[1]
        if not isinstance(node, ScalarNode) or node.style:
            return None
        try:
            value = _scalar(node)
        except ValueError:
            return None
        return node.value if value is not None and not isinstance(value, str) else None

    def rebuild(self) -> Any:
        """The document's data built again from its text (the same values `data` had)."""
        if self._stream is None:
            return self.data
        return _Builder().build(self._stream.root(self._index))

    def release(self) -> None:
        """Drop the composed nodes of this document's stream and pack its text (both are composed
        again if a position or the data is asked later)."""
        if self._stream is not None:
            self._stream.release()


def _scalar(node: ScalarNode) -> Any:
    """Resolve a scalar by YAML 1.2's core schema, starting from PyYAML's 1.1 guess.

    The 1.1 resolvers match a superset of 1.2's booleans and numbers, so a scalar PyYAML
    tagged as a string is a string, and only its bool/int/float guesses need narrowing.
    """
    value: str = node.value
    if node.style:
        return value  # quoted, literal or folded
    tag = node.tag
    if tag == "tag:yaml.org,2002:null":
        return None
    if tag == "tag:yaml.org,2002:bool":
        return value.lower() == "true" if value.lower() in ("true", "false") else value
    if tag == "tag:yaml.org,2002:int":
        if _INT.match(value):
            v = value.replace("_", "")
            return int(v, 0) if v.startswith(("0o", "0x")) else int(v)
        return value
    if tag == "tag:yaml.org,2002:float":
        low = value.lower()
        if low in _SPECIAL_FLOAT:
            return _SPECIAL_FLOAT[low]
        if _FLOAT.match(value):
            return float(value.replace("_", ""))
        return value
    return value  # strings, timestamps (the schema parses them) and custom tags


class _Builder:
    """Plain Python values from composed nodes, counting values (aliases each time they are used)."""

    __slots__ = ("problems", "values")

    def __init__(self) -> None:
        self.values = 0
        self.problems: list[YamlError] = []

    def build(self, node: Node) -> Any:
        self.values += 1
        if self.values > MAX_VALUES:
            raise YamlError(
                *_mark(node), f"the document expands to more than {MAX_VALUES} values (aliases repeating aliases?)"
            )
        kind = node.__class__
        if kind is ScalarNode:
            assert isinstance(node, ScalarNode)  # for mypy; `kind is` is the fast test
            if node.style or node.tag == _STR:
                return node.value
            try:
                return _scalar(node)
            except ValueError:  # an integer of more digits than Python converts (4300)
                raise YamlError(
                    *_mark(node),
                    f"the number {node.value[:12]}... has {len(node.value)} characters: too long to be a value here",
                ) from None
        if kind is MappingNode:
            result: dict[str, Any] = {}
            build = self.build
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE:
                    raise YamlError(*_mark(key_node), "YAML merge keys (<<) are not supported; write the fields out")
                if key_node.__class__ is not ScalarNode:
                    raise YamlError(*_mark(key_node), "mapping keys must be plain strings")
                key = key_node.value
                if key in result:
                    first = next(_mark(k) for k, _ in node.value if k.value == key)
                    self.problems.append(
                        YamlError(
                            *_mark(key_node), f"duplicate key {key!r} (first at line {first[0]}); remove one of them"
                        )
                    )
                    continue
                result[key] = build(value_node)
            return result
        if kind is SequenceNode:
            build = self.build
            return [build(item) for item in node.value]
        raise YamlError(*_mark(node), "unsupported YAML node")


def load_documents(text: str) -> list[YamlDocument]:
    """Parse every document of a YAML stream; raise YamlError with the position of the first error.

    The documents keep their nodes until `release()` (positions asked later compose the text again)."""
    roots = _compose(text)
    stream = _Stream(text, roots)
    docs: list[YamlDocument] = []
    try:
        for index, node in enumerate(roots):
            builder = _Builder()
            doc = YamlDocument(data=builder.build(node), line=node.start_mark.line + 1, _stream=stream, _index=index)
            doc.problems = builder.problems
            docs.append(doc)
    except RecursionError:
        raise YamlError(0, 0, "invalid YAML: nested too deeply") from None
    return docs
