"""`docs/config.md`, generated from the config models (`immunity config docs`).

Every field of immunity.yaml, with its type, default and the field's docstring, section by
section as the models nest; then each installed adapter's own fields by role and `kind`.
The test `tests/unit/test_config_reference.py` fails when a core field has no docstring or
when docs/config.md differs from what this module writes.
"""

from __future__ import annotations

import ast
import inspect
import itertools
import textwrap
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from immunity import plugins
from immunity.config.models import AdapterBlock, Config

_ROLES = (
    ("balancer", "lb"),
    ("driver", "hosts"),
    ("signals", "signals"),
    ("notify", "notify"),
)


def attribute_docs(cls: type) -> dict[str, str]:
    """Field name -> the docstring written under it in the class body (and its bases)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass in (object, BaseModel) or not issubclass(klass, BaseModel):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in itertools.pairwise(body):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                out[node.target.id] = inspect.cleandoc(nxt.value.value)
    return out


def _type_name(tp: Any) -> str:
    meta = getattr(tp, "__metadata__", ())
    for m in meta:
        fn = getattr(m, "func", None)
        name = getattr(fn, "__name__", "")
        if "duration" in name:
            return 'duration ("30s")'
        if "fraction" in name:
            return 'fraction (0.05 or "5%")'
        if "statuses" in name:
            return 'HTTP statuses (200, "2xx", list)'
        if "wave" in name:
            return 'count or "25%"'
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (list, tuple):
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        parts = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (" (optional)" if type(None) in args else "")
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "section" if tp is not AdapterBlock else "`kind` + adapter fields"
    return getattr(tp, "__name__", str(tp))


def _default(info: FieldInfo, type_name: str = "") -> str:
    if info.is_required():
        return "**required**"
    factory: Any = info.default_factory
    value = factory() if factory is not None else info.default
    if value is PydanticUndefined:
        return ""
    if isinstance(value, BaseModel):
        return "see below"
    if isinstance(value, tuple):
        value = list(value)
    if type_name.startswith("duration") and isinstance(value, int | float):
        return f"`{value:g}s`" if value >= 1 or value == 0 else f"`{value * 1000:g}ms`"
    return f"`{value!r}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _section(title: str, model: type[BaseModel], docs_of: dict[str, str], out: list[str]) -> None:
    out.append(f"## `{title}`\n")
    if model.__doc__:
        out.append(inspect.cleandoc(model.__doc__).split("\n\n")[0] + "\n")
    out.append("| field | type | default | meaning |")
    out.append("| --- | --- | --- | --- |")
    for name, info in model.model_fields.items():
        doc = info.description or docs_of.get(name, "")
        tp: Any = info.annotation
        if info.metadata:
            tp = typing.Annotated[(tp, *info.metadata)]
        type_name = _type_name(tp)
        out.append(
            f"| `{name}` | {_cell(type_name)} | {_cell(_default(info, type_name))} | {_cell(doc)} |"
        )
    out.append("")


def _nested(model: type[BaseModel]) -> list[tuple[str, type[BaseModel]]]:
    out = []
    for name, info in model.model_fields.items():
        tp = info.annotation
        args = typing.get_args(tp) or (tp,)
        for a in args:
            if isinstance(a, type) and issubclass(a, BaseModel) and a is not AdapterBlock:
                out.append((name, a))
                break
    return out


def core_models() -> list[tuple[str, type[BaseModel]]]:
    """(path, model) for immunity.yaml and every section under it, in file order."""
    out: list[tuple[str, type[BaseModel]]] = [("immunity.yaml", Config)]
    for name, model in _nested(Config):
        out.append((f"{name}[]" if _is_list(Config, name) else name, model))
    return out


def _is_list(model: type[BaseModel], name: str) -> bool:
    return typing.get_origin(model.model_fields[name].annotation) is list


def undocumented() -> list[str]:
    """Core fields without a docstring, as `section.field`."""
    missing = []
    for path, model in core_models():
        for name, info in model.model_fields.items():
            if not (info.description or attribute_docs(model).get(name)):
                missing.append(f"{path}.{name}")
    return missing


def markdown() -> str:
    """The whole of docs/config.md."""
    from immunity.config.schema import adapter_settings

    out = [
        "# immunity.yaml reference",
        "",
        "<!-- Generated by `immunity config docs -o docs/config.md` from the config models;",
        "     do not edit by hand. tests/unit/test_config_reference.py checks it is current. -->",
        "",
        "Durations carry their unit (`250ms`, `30s`, `5m`, `1h`; `0` alone is allowed).",
        'Fractions are `0.05` or `"5%"`. `${VAR}` and `${VAR:-default}` are read from the',
        "environment. A key given twice is an error; YAML merge keys (`<<: *anchor`) work.",
        "`immunity config validate FILE` checks a file; `immunity config schema` prints the",
        "JSON Schema for editors. `validate` reads the file only, not what it points at (a",
        "signal's access log in the wrong `log_format`, a socket that does not answer):",
        "`immunity deploy --dry-run` runs the preflight, which reads them and touches nothing.",
        "",
    ]
    for path, model in core_models():
        _section(path, model, attribute_docs(model), out)
    out.append("# Adapters\n")
    out.append(
        "Each adapter block takes `kind` plus that adapter's own fields, listed here for "
        "the adapters installed with immunity.\n"
    )
    for block, role in _ROLES:
        for kind, settings in adapter_settings(role).items():
            _section(f"{block}: kind {kind}", settings, attribute_docs(settings), out)
            meta = getattr(plugins.adapter_class(role, kind), "META_KEYS", None)
            if meta is not None:
                out.append(
                    f"`hosts[].meta` keys read by the {kind} driver: "
                    + (", ".join(f"`{k}`" for k in sorted(meta)) or "none")
                    + " (any other key is an error).\n"
                )
    return "\n".join(out).rstrip() + "\n"
