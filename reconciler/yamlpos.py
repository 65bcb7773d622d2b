"""YAML reading that remembers where every value came from and refuses YAML's traps.

- Every mapping key and value gets a `(line, col)` (1-based) so errors point at `file:line:col`.
- Duplicate keys in a mapping are an error (PyYAML silently keeps the last one).
- Only `true`/`false` are booleans (YAML 1.2 core schema): `on`, `yes`, `no`, `off` stay strings,
  so `country: no` does not become `False`. Timestamps stay strings; the schema parses them.
- Numbers follow YAML 1.2 (`1.10` is still a float: where a string is expected the schema rejects
  it with a hint to quote it, instead of silently turning it into "1.1").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

Path_ = tuple[str | int, ...]

_INT = re.compile(r"^[-+]?(0|[1-9][0-9_]*)$|^0o[0-7]+$|^0x[0-9a-fA-F]+$")
_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9][0-9_]*(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")
_SPECIAL_FLOAT = {".inf": float("inf"), "+.inf": float("inf"), "-.inf": float("-inf"), ".nan": float("nan")}

#: Most values one document may expand to. Aliases are resolved by copying, so a few lines of
#: nested aliases ("billion laughs") would otherwise expand to billions of values and never end;
#: a real manifest has a few hundred.
MAX_VALUES = 50_000


@dataclass
class YamlDocument:
    """One `---` document: its data, and the position of every path inside it."""

    data: Any
    line: int
    positions: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    #: paths whose value was an unquoted scalar that is not a string (for "quote it" hints)
    plain_scalars: dict[Path_, str] = field(default_factory=dict)
    #: problems found while building that do not stop the rest of the document (duplicate keys)
    problems: list[YamlError] = field(default_factory=list)
    #: values built so far, aliases counted each time they are used (bounded by MAX_VALUES)
    values: int = 0

    def where(self, path: Path_) -> tuple[int, int]:
        """Position of the longest prefix of `path` that is known."""
        for n in range(len(path), -1, -1):
            pos = self.positions.get(tuple(path[:n]))
            if pos:
                return pos
        return (self.line, 1)


class YamlError(Exception):
    def __init__(self, line: int, col: int, message: str) -> None:
        self.line, self.col, self.message = line, col, message
        super().__init__(message)


def _scalar(node: yaml.ScalarNode) -> Any:
    """Resolve a scalar by YAML 1.2's core schema, starting from PyYAML's 1.1 guess.

    The 1.1 resolvers match a superset of 1.2's booleans and numbers, so a scalar PyYAML
    tagged as a string is a string, and only its bool/int/float guesses need narrowing.
    """
    value: str = node.value
    if node.style is not None:
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


def _build(node: yaml.Node, path: Path_, doc: YamlDocument) -> Any:
    doc.values += 1
    if doc.values > MAX_VALUES:
        raise YamlError(
            node.start_mark.line + 1,
            node.start_mark.column + 1,
            f"the document expands to more than {MAX_VALUES} values (aliases repeating aliases?)",
        )
    doc.positions.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
    if isinstance(node, yaml.ScalarNode):
        try:
            value = _scalar(node)
        except ValueError:  # an integer of more digits than Python converts (4300)
            raise YamlError(
                node.start_mark.line + 1,
                node.start_mark.column + 1,
                f"the number {node.value[:12]}... has {len(node.value)} characters: too long to be a value here",
            ) from None
        if not isinstance(value, str) and value is not None and node.style is None:
            doc.plain_scalars[path] = node.value
        return value
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, (*path, i), doc) for i, item in enumerate(node.value)]
    if isinstance(node, yaml.MappingNode):
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise YamlError(
                    key_node.start_mark.line + 1,
                    key_node.start_mark.column + 1,
                    "YAML merge keys (<<) are not supported; write the fields out",
                )
            if not isinstance(key_node, yaml.ScalarNode):
                raise YamlError(
                    key_node.start_mark.line + 1, key_node.start_mark.column + 1, "mapping keys must be plain strings"
                )
            key = key_node.value
            if key in result:
                first = doc.positions.get((*path, key), (0, 0))
                doc.problems.append(
                    YamlError(
                        key_node.start_mark.line + 1,
                        key_node.start_mark.column + 1,
                        f"duplicate key {key!r} (first at line {first[0]}); remove one of them",
                    )
                )
                continue
            doc.positions[(*path, key)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            result[key] = _build(value_node, (*path, key), doc)
        return result
    raise YamlError(node.start_mark.line + 1, node.start_mark.column + 1, "unsupported YAML node")


class _Loader(yaml.SafeLoader):
    """SafeLoader, only used to compose nodes: aliases still resolve, no Python objects."""


def load_documents(text: str) -> list[YamlDocument]:
    """Parse every document of a YAML stream; raise YamlError with the position of the first error."""
    docs: list[YamlDocument] = []
    try:
        for node in yaml.compose_all(text, Loader=_Loader):
            if node is None:
                continue
            doc = YamlDocument(data=None, line=node.start_mark.line + 1)
            doc.data = _build(node, (), doc)
            docs.append(doc)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        problem = exc.problem or exc.context or "invalid YAML"
        raise YamlError(line, col, f"invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:  # e.g. reader errors on control characters
        mark = getattr(exc, "position", None)
        raise YamlError(0, 0, f"invalid YAML: {exc}") from None
    except RecursionError:
        raise YamlError(0, 0, "invalid YAML: nested too deeply") from None
    return docs
