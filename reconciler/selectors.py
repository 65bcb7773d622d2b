"""Label selectors in kubectl's grammar: `a=b,c!=d`, `a==b`, `k in (x,y)`, `k notin (x,y)`, `k`, `!k`.

A selector is a list of requirements, all of which a model's labels must meet; repeated
`--selector` flags are ANDed (their requirements joined). This module is a leaf (no pydantic).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

_KEY = r"[A-Za-z0-9]([A-Za-z0-9_.\-/]*[A-Za-z0-9])?"
_VALUE = r"([A-Za-z0-9]([A-Za-z0-9_.\-]*[A-Za-z0-9])?)?"
_SET = re.compile(rf"^\s*(?P<key>{_KEY})\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)\s*$")
_CMP = re.compile(rf"^\s*(?P<key>{_KEY})\s*(?P<op>==|!=|=)\s*(?P<value>{_VALUE})\s*$")
_EXISTS = re.compile(rf"^\s*(?P<not>!?)\s*(?P<key>{_KEY})\s*$")
_VALUE_RE = re.compile(rf"^{_VALUE}$")


class SelectorError(ValueError):
    """A selector that is not in kubectl's grammar; the message names the bad part."""


@dataclass(frozen=True)
class Requirement:
    """One term of a selector: `key op values`."""

    key: str
    op: str  # "=" (also `in`), "!=" (also `notin`), "exists", "!exists"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether `labels` meet this term (as kubectl: `!=` and `notin` match a missing key)."""
        if self.op == "exists":
            return self.key in labels
        if self.op == "!exists":
            return self.key not in labels
        if self.op in ("=", "in"):
            return labels.get(self.key) in self.values
        return labels.get(self.key) not in self.values


def _terms(text: str) -> list[str]:
    """Split at the commas outside parentheses."""
    out, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(text[start:i])
            start = i + 1
    out.append(text[start:])
    return out


def _requirement(term: str, whole: str) -> Requirement:
    if m := _SET.match(term):
        values = [v.strip() for v in m["values"].split(",")]
        bad = [v for v in values if not v or not _VALUE_RE.match(v)]
        if bad:
            raise SelectorError(f"{whole!r}: bad value list in {term.strip()!r}")
        return Requirement(m["key"], "=" if m["op"] == "in" else "!=", frozenset(values))
    if m := _CMP.match(term):
        op = "!=" if m["op"] == "!=" else "="
        return Requirement(m["key"], op, frozenset([m["value"]]))
    if m := _EXISTS.match(term):
        return Requirement(m["key"], "!exists" if m["not"] else "exists")
    raise SelectorError(
        f"{whole!r}: cannot read {term.strip()!r}; write k=v, k!=v, 'k in (a,b)', 'k notin (a,b)', k or !k"
    )


def parse_selector(text: str) -> list[Requirement]:
    """The requirements of one `--selector` value; SelectorError when it is not kubectl's grammar."""
    if not text.strip():
        raise SelectorError("empty selector")
    return [_requirement(term, text) for term in _terms(text)]


def parse_selectors(texts: Iterable[str]) -> list[Requirement]:
    """Every `--selector` value's requirements, joined (the flags are ANDed)."""
    return [r for t in texts for r in parse_selector(t)]


def matches(requirements: Iterable[Requirement], labels: Mapping[str, str]) -> bool:
    """Whether `labels` meet every requirement."""
    return all(r.matches(labels) for r in requirements)
