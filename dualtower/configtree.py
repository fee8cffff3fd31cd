"""One typed config tree from a TOML or YAML file plus dotted overrides (`--train.steps=100`).

Every key must name a field of the dataclass tree; an unknown key is an error listing the known ones.
Values are converted to the field's type (int, float, bool, str).
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

from .errors import NotFound, UserError


def _field_types(cls) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _convert(value, kind, where: str):
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise UserError(f"{where} must be a table of settings, got {value!r}")
        return build(kind, value, where)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise UserError(f"{where} must be true or false, got {value!r}")
    if kind in (int, float):
        if isinstance(value, bool):
            raise UserError(f"{where} must be a number, got {value!r}")
        try:
            converted = kind(value)
        except (TypeError, ValueError):
            raise UserError(f"{where} must be {'an integer' if kind is int else 'a number'}, got {value!r}") from None
        if kind is int and isinstance(value, float) and value != converted:
            raise UserError(f"{where} must be an integer, got {value!r}")
        return converted
    if kind is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise UserError(f"{where} must be a string, got {value!r}")
        return str(value)
    raise TypeError(f"{where}: unsupported field type {kind}")


def build(cls, data: dict, where: str = "config"):
    types = _field_types(cls)
    unknown = sorted(set(data) - set(types))
    if unknown:
        raise UserError(f"unknown key(s) {', '.join(f'{where}.{k}' for k in unknown)}; "
                         f"known in {where}: {', '.join(sorted(types))}")
    return cls(**{k: _convert(v, types[k], f"{where}.{k}") for k, v in data.items()})


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def read_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"{path}: no such config file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e})") from e
    if path.suffix == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise UserError(f"{path}: not valid TOML ({e})") from e
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ModuleNotFoundError as e:
            raise UserError(f"{path}: reading YAML needs PyYAML (pip install pyyaml), or use TOML") from e
        try:
            data = yaml.safe_load(text) or {}
        except (yaml.YAMLError, RecursionError) as e:
            raise UserError(f"{path}: not valid YAML ({' '.join(str(e).split())[:300]})") from e
        if not isinstance(data, dict):
            raise UserError(f"{path}: the top level must be a mapping")
        return data
    raise UserError(f"{path}: config files are .toml, .yaml or .yml")


def pair_overrides(args: list[str]) -> list[str]:
    """`--train.steps 100` written as `--train.steps=100`: a dotted key without `=` takes the next word as its value
    (other options, `--resume DIR`, are the parser's)."""
    out, i = [], 0
    while i < len(args):
        item = args[i]
        if item.startswith("--") and "." in item and "=" not in item and i + 1 < len(args) and \
                not args[i + 1].startswith("--"):
            out.append(f"{item}={args[i + 1]}")
            i += 2
        else:
            out.append(item)
            i += 1
    return out


def describe(cls, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, help) for every leaf of a config tree, from the fields' defaults and help metadata."""
    rows = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.default_factory):  # a section
            rows += describe(f.default_factory, f"{prefix}{f.name}.")
            continue
        default = str(f.default).lower() if isinstance(f.default, bool) else str(f.default) or "''"
        rows.append((f"{prefix}{f.name}", default, f.metadata.get("help", "")))
    return rows


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`train.steps=100` or `--train.steps=100` set data["train"]["steps"] = "100" (typed later by `build`)."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for item in overrides:
        item = item[2:] if item.startswith("--") else item
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"override {item!r} is not of the form --section.key=value")
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise UserError(f"override {item!r}: {p} is not a section")
        node[leaf] = value
    return data


def load(cls, path: str | Path | None, overrides: list[str]):
    data = read_file(path) if path else {}
    return build(cls, apply_overrides(data, overrides))
