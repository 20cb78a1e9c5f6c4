"""One policy rule: which resources it looks at, which checkov check it mirrors, how it checks."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Props = Mapping[str, Any]
# Returns None when the resource complies, else what is wrong and how to fix it.
Check = Callable[[Props], "str | None"]

_CHECKOV_ID = re.compile(r"^CKV2?_AZURE_\d+$")


class _NamesCheckov:
    """What every rule shares: it must name the checkov check(s) it mirrors, in its description too."""

    name: str
    checkov_ids: tuple[str, ...]
    summary: str

    def __post_init__(self) -> None:
        if not self.checkov_ids or not all(_CHECKOV_ID.match(i) for i in self.checkov_ids):
            raise ValueError(f"rule {self.name} must name its checkov check(s), got {self.checkov_ids}")

    @property
    def checkov(self) -> str:
        return "/".join(self.checkov_ids)

    @property
    def description(self) -> str:
        return f"{self.checkov}: {self.summary}"


@dataclass(frozen=True)
class Rule(_NamesCheckov):
    name: str
    checkov_ids: tuple[str, ...]
    resource_types: tuple[str, ...]
    summary: str
    check: Check

    def applies_to(self, resource_type: str) -> bool:
        return resource_type in self.resource_types

    def validate(self, resource_type: str, props: Props) -> str | None:
        """The violation message for one resource, or None (also when the rule does not apply)."""
        if not self.applies_to(resource_type):
            return None
        problem = self.check(props)
        return None if problem is None else f"{self.checkov} ({self.name}): {problem}"


@dataclass(frozen=True)
class StackResource:
    """A resource as a stack rule sees it: its inputs and, per input, the URNs it came from."""

    type: str
    urn: str
    props: Props
    property_dependencies: Mapping[str, Sequence[str]] = field(default_factory=dict)


# Returns (problem, urn of the offending resource) pairs.
StackCheck = Callable[[Sequence[StackResource]], "list[tuple[str, str]]"]


@dataclass(frozen=True)
class StackRule(_NamesCheckov):
    """A rule that needs more than one resource (e.g. a workspace and its storage account)."""

    name: str
    checkov_ids: tuple[str, ...]
    summary: str
    check: StackCheck

    def validate_stack(self, resources: Sequence[StackResource]) -> list[tuple[str, str]]:
        return [(f"{self.checkov} ({self.name}): {problem}", urn) for problem, urn in self.check(resources)]


def violations(rules: Iterable[Rule], resource_type: str, props: Props) -> list[str]:
    return [
        m for rule in rules if isinstance(rule, Rule) and (m := rule.validate(resource_type, props)) is not None
    ]


def dig(props: Props, *path: str, default: Any = None) -> Any:
    """props["a"]["b"]..., or default where any level is missing."""
    value: Any = props
    for key in path:
        if not isinstance(value, Mapping) or value.get(key) is None:
            return default
        value = value[key]
    return value
