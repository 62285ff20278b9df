"""Declarative settings: a dataclass field that also says how to check, read and write it.

A spec class declares each setting once, as ``cpu_cores: float = setting("number", 0.1,
"containerResourceRequirements.cpu", "CPU cores reserved for each replica")``: the type
(annotation and kind), the default, the bounds, the v1 JSON path(s) and the help text. The
v1 keyword (``flat``) is the field's name with the class's prefix (``autoscale_`` for the
autoscaler's fields); the CLI flag is that keyword with dashes unless ``flag`` says
otherwise. Validation, the v1 JSON conversions, ``deploy_configuration()``'s keywords and
the CLI's flags are derived from these declarations (``settings_of``) instead of each
keeping its own list.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from modelfleet.spec.checks import _bool, _int, _opt_str, _positive, _str_map

_META = "modelfleet.setting"
Kind = Literal["int", "number", "bool", "text", "map"]


@dataclass(frozen=True)
class Setting:
    """One setting: everything every layer needs to know about it."""

    kind: Kind
    default: Any
    v1: tuple[str, ...]  # paths in deploymentconfig.json; the first is the one written
    help: str
    lo: int | None = None  # ints: the smallest allowed value
    hi: int | None = None  # ints: the largest allowed value
    optional: bool = False  # None is allowed and means "not given"
    secret: bool = False  # left out of repr, and of the stored and v1 forms unless asked for
    check: Callable[[str, Any], None] | None = None  # a further rule on a given value
    cli_flag: str | None = None  # the CLI's flag where it is not the keyword with dashes
    # Filled in by ``settings_of`` from the class that declares the field.
    name: str = ""  # the field's name on its class
    flat: str = ""  # v1's keyword, and the name errors use
    group: str | None = None  # the DeploySpec field holding the nested value, or None

    @property
    def flag(self) -> str:
        return self.cli_flag or "--" + self.flat.replace("_", "-")

    def validate(self, value: object) -> Any:
        """The value, normalised (numbers to float, maps copied), or ``ConfigError`` naming
        ``flat``, the allowed values and the value found."""
        if value is None and self.optional:
            return None
        checked = _KIND_CHECKS[self.kind](self, value)
        if self.check is not None:
            self.check(self.flat, checked)
        return checked

    def bounds(self) -> str:
        """The allowed values in words, for help texts."""
        if self.kind == "int":
            return f"{self.lo}-{self.hi}" if self.hi is not None else f">= {self.lo}"
        return {"number": "> 0", "bool": "true|false", "text": "text", "map": "KEY=VALUE"}[self.kind]


_KIND_CHECKS: dict[str, Callable[[Setting, Any], Any]] = {
    "int": lambda s, v: _int(s.flat, v, s.lo if s.lo is not None else 0, s.hi),
    "number": lambda s, v: _positive(s.flat, v),
    "bool": lambda s, v: _bool(s.flat, v),
    "text": lambda s, v: _opt_str(s.flat, v),
    "map": lambda s, v: _str_map(s.flat, v),
}


def setting(
    kind: Kind,
    default: Any,
    v1: str | tuple[str, ...],
    help: str,  # noqa: A002 - the table's column name
    *,
    lo: int | None = None,
    hi: int | None = None,
    secret: bool = False,
    check: Callable[[str, Any], None] | None = None,
    flag: str | None = None,
) -> Any:
    """A dataclass field declaring one setting (see the module docstring)."""
    if kind not in _KIND_CHECKS:
        raise ValueError(f"unknown setting kind {kind!r}")
    paths = (v1,) if isinstance(v1, str) else v1
    meta = Setting(kind, default, paths, help, lo, hi, default is None or kind == "text", secret, check, flag)
    if isinstance(default, dict):
        return dataclasses.field(default_factory=dict, metadata={_META: meta})
    return dataclasses.field(default=default, repr=not secret, metadata={_META: meta})


def settings_of(cls: type, prefix: str = "", group: str | None = None) -> list[Setting]:
    """The settings ``cls`` declares, in field order, with their names filled in."""
    return [
        dataclasses.replace(f.metadata[_META], name=f.name, flat=prefix + f.name, group=group)
        for f in dataclasses.fields(cls)
        if _META in f.metadata
    ]


def validate_settings(obj: object, settings: list[Setting]) -> None:
    """Check every setting of a frozen dataclass instance, writing normalised values back."""
    for s in settings:
        value = getattr(obj, s.name)
        checked = s.validate(value)
        if checked is not value:
            object.__setattr__(obj, s.name, checked)  # frozen: written once, in __post_init__


# --------------------------------------------------------------------------- v1 JSON paths


def json_get(d: Mapping[str, Any], path: str) -> Any:
    """The value at ``"section.key"`` or ``"key"``; None when it or its section is absent."""
    *section, key = path.split(".")
    node: Any = d
    for part in section:
        node = node.get(part) if isinstance(node, Mapping) else None
    return node.get(key) if isinstance(node, Mapping) else None


def json_put(d: dict[str, Any], path: str, value: Any) -> None:
    *section, key = path.split(".")
    node = d
    for part in section:
        node = node.setdefault(part, {})
    node[key] = value


def json_sections(settings: list[Setting]) -> dict[str, list[str]]:
    """Top-level key -> the keys its object may hold ([] for a plain value), in table order."""
    sections: dict[str, list[str]] = {}
    for s in settings:
        for path in s.v1:
            top, _, key = path.partition(".")
            keys = sections.setdefault(top, [])
            if key:
                keys.append(key)
    return sections
