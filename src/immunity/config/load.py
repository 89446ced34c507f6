"""Load immunity.yaml: YAML with positions, `${ENV}` interpolation, strict validation.

Every problem is reported as `file:line:col field: what was expected, got what`, all at
once and sorted by line, before any host is touched. A value that came from `${ENV}` is
never echoed back (it may be a secret): the error shows the `${NAME}` text from the file
instead. Structured values (a mapping, a list) are never dumped into a message.

YAML rules that would otherwise make a file silently mean something else:

* a key given twice in one mapping is an error naming both lines (PyYAML keeps the last);
* merge keys (`<<: *web`) work, and a problem in a merged or aliased value is reported at
  the line that uses the alias, not at the anchor;
* numbers YAML 1.1 reads in a surprising way (`010` octal, `1:30` base 60, `0x1F`,
  `.inf`, `.nan`) are errors; a text field given an unquoted `yes`/`no`/`on`/`off` (read
  as true/false) is reported with the advice to quote it.
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from immunity import plugins
from immunity.config.models import LOADER_CONTEXT, AdapterBlock, Config
from immunity.errors import ConfigError

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")
_MERGE_TAG = "tag:yaml.org,2002:merge"
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_BOOL_TAG = "tag:yaml.org,2002:bool"
_PLAIN_NUMBER = re.compile(r"^[-+]?(0|[1-9][0-9_]*)(\.[0-9_]*)?([eE][-+]?[0-9]+)?$")

Loc = tuple[int | str, ...]
Mark = tuple[int, int]

ROLE_OF = {"balancer": "lb", "driver": "hosts", "signals": "signals", "notify": "notify"}


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config plus each adapter block's validated Settings."""

    path: Path
    config: Config
    balancer: BaseModel
    driver: BaseModel
    signals: dict[str, tuple[str, BaseModel]]  # name -> (kind, settings)
    notify: list[tuple[str, BaseModel]]

    @property
    def base_dir(self) -> Path:
        return self.path.parent


@dataclass(frozen=True)
class _AliasUse:
    """A node reached through `*alias`, with the position of the alias itself."""

    node: yaml.Node
    mark: Mark


class _Loader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML ships no types for its loaders
    """Composes like SafeLoader, but keeps where each alias was used."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = super().compose_node(parent, index)
            return _AliasUse(node, (event.start_mark.line + 1, event.start_mark.column + 1))
        return super().compose_node(parent, index)


@dataclass
class _Problems:
    """Problems found so far, each with its position; printed sorted by line."""

    fname: str
    items: list[tuple[int, int, str]] = field(default_factory=list)

    def add(self, mark: Mark, where: str, msg: str) -> None:
        text = f"{self.fname}:{mark[0]}:{mark[1]} {where}: {msg}"
        if all(t != text for _, _, t in self.items):
            self.items.append((mark[0], mark[1], text))

    def sorted(self) -> list[str]:
        return [t for _, _, t in sorted(self.items, key=lambda i: (i[0], i[1]))]


class _Positions:
    def __init__(self) -> None:
        self.marks: dict[Loc, Mark] = {}  # where each value starts
        self.keys: dict[Loc, Mark] = {}  # where each mapping key starts
        self.raw: dict[Loc, str] = {}  # scalar text as written, for interpolated values
        self.bool_words: dict[Loc, str] = {}  # `no`, `on`... read as booleans
        self.unset: set[Loc] = set()  # values already reported (an unset ${VAR}, a bad number)
        self.env_uses: dict[str, list[tuple[Mark, Loc]]] = {}


class _Builder:
    def __init__(self, problems: _Problems) -> None:
        self.problems = problems
        self.pos = _Positions()

    def build(self, node: Any, loc: Loc, at: Mark | None = None) -> Any:
        """Plain Python data from a composed node, recording every position on the way.

        `at` overrides positions inside an aliased value: they all point at the alias use.
        """
        if isinstance(node, _AliasUse):
            return self.build(node.node, loc, at or node.mark)
        mark = at or (node.start_mark.line + 1, node.start_mark.column + 1)
        self.pos.marks[loc] = mark
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, loc, at)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(v, (*loc, i), at) for i, v in enumerate(node.value)]
        assert isinstance(node, yaml.ScalarNode)
        return self._scalar(node, loc, mark)

    def _mapping(self, node: yaml.MappingNode, loc: Loc, at: Mark | None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        merged: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        explicit: list[tuple[str, Mark, Any]] = []
        for k, v in node.value:
            kmark = at or (k.start_mark.line + 1, k.start_mark.column + 1)
            if isinstance(k, yaml.ScalarNode) and k.tag == _MERGE_TAG:
                # `<<: *web` or `<<: [*a, *b]`: earlier sources win, explicit keys win over all
                sources = v.value if isinstance(v, yaml.SequenceNode) else [v]
                for src in sources:
                    src_at = at or (src.mark if isinstance(src, _AliasUse) else kmark)
                    got = self.build(src, loc, src_at)
                    if not isinstance(got, dict):
                        self.problems.add(
                            kmark, _dotted(loc) or "(top)", "a merge key (<<) takes a mapping"
                        )
                        continue
                    for key, value in got.items():
                        merged.setdefault(key, value)
                        self.pos.keys.setdefault((*loc, key), src_at)
                continue
            key = str(k.value) if isinstance(k, yaml.ScalarNode) else str(k)
            if key in first_line:
                self.problems.add(
                    kmark,
                    _dotted((*loc, key)),
                    f"given twice, at lines {first_line[key]} and {kmark[0]}: "
                    "YAML would keep only the last; keep one",
                )
            first_line.setdefault(key, kmark[0])
            explicit.append((key, kmark, v))
        for key, value in merged.items():
            out[key] = value
        for key, kmark, v in explicit:
            self.pos.keys[(*loc, key)] = kmark
            out[key] = self.build(v, (*loc, key), at)
        self.pos.marks[loc] = at or (node.start_mark.line + 1, node.start_mark.column + 1)
        return out

    def _scalar(self, node: yaml.ScalarNode, loc: Loc, mark: Mark) -> Any:
        text = node.value
        plain_number = node.tag in (_INT_TAG, _FLOAT_TAG) and node.style is None
        if plain_number and not _PLAIN_NUMBER.match(text):
            self.problems.add(
                mark,
                _dotted(loc),
                f"{text} is not a plain decimal number (YAML 1.1 reads it as "
                f"{_yaml_value(node)!r}); write the number in decimal, or quote it "
                "if it is text",
            )
            self.pos.unset.add(loc)
            return text
        value = yaml.SafeLoader("").construct_object(node)
        if node.tag == _BOOL_TAG and node.style is None and text.lower() not in ("true", "false"):
            self.pos.bool_words[loc] = text
        if isinstance(value, str) and "${" in value:
            self.pos.raw[loc] = value

            def sub(m: re.Match[str]) -> str:
                name, default = m.group(1), m.group(2)
                if default is not None:  # as in the shell: unset *or empty* takes the default
                    return os.environ.get(name) or default
                if name in os.environ:
                    return os.environ[name]
                self.pos.unset.add(loc)
                self.pos.env_uses.setdefault(name, []).append((mark, loc))
                return ""

            value = _ENV.sub(sub, value)
        return value

    def report_unset(self) -> None:
        """Each unset `${VAR}` once, at its first use, naming the other uses."""
        for name, uses in self.pos.env_uses.items():
            (mark, loc), rest = uses[0], uses[1:]
            also = f" (also used at {', '.join(f'{m[0]}:{m[1]}' for m, _ in rest)})" if rest else ""
            self.problems.add(
                mark,
                _dotted(loc),
                f"expected environment variable {name} to be set, it is not{also}; "
                f"export {name}=... or write ${{{name}:-default}}",
            )


def _yaml_value(node: yaml.ScalarNode) -> Any:
    try:
        return yaml.SafeLoader("").construct_object(node)
    except Exception:  # any unreadable scalar is reported by its text
        return node.value


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out or "(top)"


def _reported(pos: _Positions, loc: Loc) -> bool:
    """Whether the value at `loc` (or one containing it) was already reported."""
    return any(loc[: i + 1] in pos.unset for i in range(len(loc)))


def _where(pos: _Positions, loc: Loc) -> Mark:
    while loc and loc not in pos.marks:
        loc = loc[:-1]
    return pos.marks.get(loc, (1, 1))


def _unwrap(tp: Any) -> list[Any]:
    """The classes a field annotation may hold (through Annotated, unions, lists, dicts)."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType, list, tuple, set, frozenset):
        return [c for a in typing.get_args(tp) for c in _unwrap(a)]
    if origin is dict:
        return _unwrap(typing.get_args(tp)[1])
    return [tp]


def _model_at(model: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The pydantic model validating the value at `loc` under `model`, if any."""
    current: type[BaseModel] = model
    for part in loc:
        if isinstance(part, int):
            continue
        info = current.model_fields.get(part)
        if info is None:
            return None
        found = [c for c in _unwrap(info.annotation) if isinstance(c, type)]
        models = [c for c in found if issubclass(c, BaseModel)]
        if not models:
            return None
        current = models[0]
    return current


def _input_text(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _format(
    problems: _Problems,
    pos: _Positions,
    base: Loc,
    exc: ValidationError,
    model: type[BaseModel],
    extra_fields: tuple[str, ...] = (),
) -> None:
    for err in exc.errors():
        loc: Loc = (
            *base,
            *[p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))],
        )
        # pydantic adds the union member name ("int", "str") for unions; drop type tags
        loc = tuple(p for p in loc if p not in ("int", "str", "float", "bool"))
        if _reported(pos, loc):
            continue  # already reported once (an unset ${VAR}, a bad number)
        mark = _where(pos, loc)
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if err["type"] == "extra_forbidden":
            mark = pos.keys.get(loc, mark)
            owner = _model_at(model, loc[len(base) : -1])
            known = sorted({*(owner.model_fields if owner else ()), *extra_fields})
            key = str(loc[-1])
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            msg = "unknown field" + (
                f"; did you mean {close[0]!r}?"
                if close
                else f", expected one of {', '.join(known)}"
            )
        elif err["type"] == "missing":
            msg = "required field is missing"
            mark = _where(pos, loc[:-1])
        elif loc in pos.bool_words and isinstance(err.get("input"), bool):
            word = pos.bool_words[loc]
            msg = (
                f"got {word}, which YAML 1.1 reads as {str(err['input']).lower()}; if it is "
                f"text quote it: {chr(34)}{word}{chr(34)}, else write the value meant"
            )
        elif err["type"] == "literal_error":
            choices = re.findall(r"'([^']*)'", str((err.get("ctx") or {}).get("expected", "")))
            given = str(err.get("input"))
            close = difflib.get_close_matches(given.replace("-", "_").lower(), choices, n=1)
            msg = f"expected one of {', '.join(choices)}, got {given!r}" + (
                f"; did you mean {close[0]!r}?" if close else ""
            )
        elif isinstance(err.get("input"), dict) and pos.raw.get(loc) is None:
            pass  # a rule over the whole block: its message says what is wrong
        elif "got" not in msg and "input" in err:
            shown = pos.raw.get(loc)
            got = shown if shown is not None else _input_text(err["input"])
            msg = f"{msg}, got {got}"
        problems.add(mark, _dotted(loc), msg)


def _adapter(
    role: str, block: AdapterBlock, loc: Loc, problems: _Problems, pos: _Positions
) -> BaseModel | None:
    try:
        cls = plugins.adapter_class(role, block.kind)
    except ConfigError as exc:
        problems.add(
            _where(pos, (*loc, "kind")), _dotted((*loc, "kind")), f"{exc.message} ({exc.hint})"
        )
        return None
    settings_model: type[BaseModel] = cls.Settings
    try:
        return settings_model.model_validate(block.settings_dict(), context=LOADER_CONTEXT)
    except ValidationError as exc:
        _format(problems, pos, loc, exc, settings_model, ("kind",))
        return None


def _check_meta(kind: str, hosts: Any, problems: _Problems, pos: _Positions) -> None:
    """`hosts[].meta` keys the driver does not read would be ignored (a typo such as
    `ssh_hots` deploys to `address` instead): each is reported at its key."""
    try:
        known = getattr(plugins.adapter_class("hosts", kind), "META_KEYS", None)
    except ConfigError:
        return  # the unknown kind is reported already
    if known is None or not isinstance(hosts, list):
        return
    for i, host in enumerate(hosts):
        meta = host.get("meta") if isinstance(host, dict) else None
        if not isinstance(meta, dict):
            continue
        for key in meta:
            if key in known:
                continue
            loc: Loc = ("hosts", i, "meta", key)
            close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.add(
                pos.keys.get(loc, _where(pos, loc)),
                _dotted(loc),
                f"the {kind} driver reads no such meta key (it reads "
                f"{', '.join(sorted(known)) or 'none'}){hint}",
            )


def parse(text: str, fname: str) -> LoadedConfig:
    """Validate config text; raise ConfigError listing every problem, sorted by line."""
    problems = _Problems(fname)
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{mark.line + 1}:{mark.column + 1}" if mark else "1:1"
        raise ConfigError(
            f"{fname}: not valid YAML", [f"{fname}:{where} (yaml): {getattr(exc, 'problem', exc)}"]
        ) from exc
    if isinstance(node, _AliasUse):
        node = node.node
    if node is None or not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{fname}: empty", [f"{fname}:1:1 (top): expected a mapping of settings"])
    builder = _Builder(problems)
    pos = builder.pos
    data = builder.build(node, ())
    builder.report_unset()
    cfg: Config | None = None
    try:
        cfg = Config.model_validate(data, context=LOADER_CONTEXT)
    except ValidationError as exc:
        _format(problems, pos, (), exc, Config)
        cfg = None
        # Cross-field problems are still wanted: check what validates without the keys
        # that failed (unless a required one failed, when nothing sensible is left).
        broken = {e["loc"][0] for e in exc.errors() if e["loc"]}
        if not broken & {"app", "hosts", "balancer", "driver"}:
            pruned = {k: v for k, v in data.items() if k not in broken}
            try:
                partial = Config.model_validate(pruned, context=LOADER_CONTEXT)
            except ValidationError:
                partial = None
            if partial is not None:
                for loc, msg in partial.cross_problems():
                    if loc[0] not in broken and not _reported(pos, loc):
                        problems.add(_where(pos, loc), _dotted(loc), msg)
    if cfg is not None:
        for loc, msg in cfg.cross_problems():
            if not _reported(pos, loc):
                problems.add(_where(pos, loc), _dotted(loc), msg)

    # Adapter blocks are checked even when the rest failed, so every problem shows at once.
    def block(raw: Any, loc: Loc) -> tuple[str, BaseModel | None] | None:
        if not isinstance(raw, dict) or not isinstance(raw.get("kind"), str):
            return None
        ab = AdapterBlock.model_validate(raw)
        return ab.kind, _adapter(ROLE_OF[str(loc[0])], ab, loc, problems, pos)

    balancer = block(data.get("balancer"), ("balancer",))
    driver = block(data.get("driver"), ("driver",))
    if driver is not None:
        _check_meta(driver[0], data.get("hosts"), problems, pos)
    signals: dict[str, tuple[str, BaseModel]] = {}
    for i, raw in enumerate(
        data.get("signals") or [] if isinstance(data.get("signals"), list) else []
    ):
        got = block(raw, ("signals", i))
        if got and got[1] is not None:
            signals[str(getattr(got[1], "name", None) or got[0])] = (got[0], got[1])
    notify: list[tuple[str, BaseModel]] = []
    for i, raw in enumerate(
        data.get("notify") or [] if isinstance(data.get("notify"), list) else []
    ):
        got = block(raw, ("notify", i))
        if got and got[1] is not None:
            notify.append((got[0], got[1]))
    if problems.items or cfg is None:
        found = problems.sorted() or [f"{fname}:1:1 (top): the config was rejected"]
        raise ConfigError(
            f"{fname}: {len(found)} problem(s)",
            found,
            hint=f"fix the lines above, then check again: immunity config validate {fname}",
        )
    assert balancer and balancer[1] is not None and driver and driver[1] is not None
    return LoadedConfig(Path(fname), cfg, balancer[1], driver[1], signals, notify)


def load(path: str | os.PathLike[str]) -> LoadedConfig:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(
            f"{p}: cannot read the config: {exc.strerror}",
            [f"{p}:1:1 (file): expected a readable immunity.yaml, got {exc.strerror}"],
            hint="pass -c with the path of your immunity.yaml",
        ) from exc
    loaded = parse(text, str(p))
    return LoadedConfig(
        p.resolve(), loaded.config, loaded.balancer, loaded.driver, loaded.signals, loaded.notify
    )


def resolve_path(base: Path, value: str) -> Path:
    """A path from the config, relative to the config file's folder."""
    p = Path(os.path.expanduser(value))
    return p if p.is_absolute() else (base / p)
