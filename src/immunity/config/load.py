"""Load immunity.yaml: YAML with positions, `${ENV}` interpolation, strict validation.

Every problem is reported as `file:line:col field: what was expected, got what`, all at
once, before any host is touched. A value that came from `${ENV}` is never echoed back
(it may be a secret): the error shows the `${NAME}` text from the file instead.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from immunity import plugins
from immunity.config.models import AdapterBlock, Config
from immunity.errors import ConfigError

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")

Loc = tuple[int | str, ...]

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


class _Positions:
    def __init__(self) -> None:
        self.marks: dict[Loc, tuple[int, int]] = {}
        self.raw: dict[Loc, str] = {}  # scalar text as written, for interpolated values


def _construct(node: yaml.Node, loc: Loc, pos: _Positions, problems: list[str], fname: str) -> Any:
    pos.marks[loc] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for k, v in node.value:
            key = str(k.value)
            pos.marks[(*loc, key)] = (k.start_mark.line + 1, k.start_mark.column + 1)
            out[key] = _construct(v, (*loc, key), pos, problems, fname)
            pos.marks[(*loc, key)] = (v.start_mark.line + 1, v.start_mark.column + 1)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(v, (*loc, i), pos, problems, fname) for i, v in enumerate(node.value)]
    assert isinstance(node, yaml.ScalarNode)
    value = yaml.SafeLoader(  # resolve the scalar's plain type (int, bool, float, str...)
        ""
    ).construct_object(node)
    if isinstance(value, str) and "${" in value:
        pos.raw[loc] = value

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            line, col = node.start_mark.line + 1, node.start_mark.column + 1
            problems.append(
                f"{fname}:{line}:{col} {_dotted(loc)}: expected environment variable {name} "
                f"to be set, it is not"
            )
            return ""

        value = _ENV.sub(sub, value)
    return value


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out or "(top)"


def _where(pos: _Positions, loc: Loc) -> tuple[int, int]:
    while loc and loc not in pos.marks:
        loc = loc[:-1]
    return pos.marks.get(loc, (1, 1))


def _format(fname: str, pos: _Positions, base: Loc, exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors():
        loc: Loc = (
            *base,
            *[p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))],
        )
        # pydantic adds the union member name ("int", "str") for unions; drop type tags
        loc = tuple(p for p in loc if p not in ("int", "str", "float", "bool"))
        line, col = _where(pos, loc)
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if err["type"] == "extra_forbidden":
            msg = "unknown field, expected one of the documented fields"
        elif err["type"] == "missing":
            msg = "required field is missing"
        elif "got" not in msg and "input" in err:
            shown = pos.raw.get(loc)
            got = shown if shown is not None else repr(err["input"])
            msg = f"{msg}, got {got}"
        out.append(f"{fname}:{line}:{col} {_dotted(loc)}: {msg}")
    return out


def _adapter(
    role: str, block: AdapterBlock, loc: Loc, fname: str, pos: _Positions, problems: list[str]
) -> BaseModel | None:
    try:
        cls = plugins.adapter_class(role, block.kind)
    except ConfigError as exc:
        line, col = _where(pos, (*loc, "kind"))
        problems.append(
            f"{fname}:{line}:{col} {_dotted((*loc, 'kind'))}: {exc.message} ({exc.hint})"
        )
        return None
    settings_model: type[BaseModel] = cls.Settings
    try:
        return settings_model.model_validate(block.settings_dict())
    except ValidationError as exc:
        problems.extend(_format(fname, pos, loc, exc))
        return None


def parse(text: str, fname: str) -> LoadedConfig:
    """Validate config text; raise ConfigError listing every problem."""
    problems: list[str] = []
    pos = _Positions()
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{mark.line + 1}:{mark.column + 1}" if mark else "1:1"
        raise ConfigError(
            f"{fname}: not valid YAML", [f"{fname}:{where} (yaml): {getattr(exc, 'problem', exc)}"]
        ) from exc
    if node is None or not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{fname}: empty", [f"{fname}:1:1 (top): expected a mapping of settings"])
    data = _construct(node, (), pos, problems, fname)
    cfg: Config | None = None
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        problems.extend(_format(fname, pos, (), exc))

    # Adapter blocks are checked even when the rest failed, so every problem shows at once.
    def block(raw: Any, loc: Loc) -> tuple[str, BaseModel | None] | None:
        if not isinstance(raw, dict) or not isinstance(raw.get("kind"), str):
            return None
        ab = AdapterBlock.model_validate(raw)
        return ab.kind, _adapter(ROLE_OF[str(loc[0])], ab, loc, fname, pos, problems)

    balancer = block(data.get("balancer"), ("balancer",))
    driver = block(data.get("driver"), ("driver",))
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
    if problems or cfg is None:
        raise ConfigError(f"{fname}: {len(problems)} problem(s)", problems)
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
