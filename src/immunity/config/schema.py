"""The JSON Schema of immunity.yaml, for editors (completion, checking as you type).

The core fields come from `Config`; each adapter block (`balancer`, `driver`, `signals[]`,
`notify[]`) is a choice, by `kind`, between the installed adapters' own `Settings` models,
so the schema also knows every adapter's fields. Served by `immunity config schema`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from immunity import plugins
from immunity.config.models import Config

SCHEMA_ID = "https://immunity.dev/schema/immunity.yaml.json"
_BLOCKS = {"balancer": "lb", "driver": "hosts", "signals": "signals", "notify": "notify"}


def adapter_settings(role: str) -> dict[str, type[BaseModel]]:
    """kind -> Settings model for every installed adapter of `role`."""
    out: dict[str, type[BaseModel]] = {}
    for kind in sorted(plugins.available(role)):
        out[kind] = plugins.adapter_class(role, kind).Settings
    return out


def _block_schema(role: str, defs: dict[str, Any]) -> dict[str, Any]:
    choices = []
    for kind, model in adapter_settings(role).items():
        schema = model.model_json_schema(ref_template="#/$defs/{model}", mode="validation")
        defs.update(schema.pop("$defs", {}))
        props = {"kind": {"const": kind}, **schema.get("properties", {})}
        choice: dict[str, Any] = {
            "type": "object",
            "title": f"{role} kind {kind}",
            "properties": props,
            "required": ["kind", *schema.get("required", [])],
            "additionalProperties": False,
        }
        choices.append(choice)
    return {"oneOf": choices} if choices else {"type": "object"}


def json_schema() -> dict[str, Any]:
    """The whole schema (draft 2020-12) as a dict."""
    schema = Config.model_json_schema(ref_template="#/$defs/{model}", mode="validation")
    defs: dict[str, Any] = schema.setdefault("$defs", {})
    props = schema["properties"]
    for name, role in _BLOCKS.items():
        block = _block_schema(role, defs)
        if props[name].get("type") == "array":
            props[name] = {**{k: v for k, v in props[name].items() if k != "items"}, "items": block}
        else:
            props[name] = {
                **{k: v for k, v in props[name].items() if k not in ("$ref", "allOf")},
                **block,
            }
    defs.pop("AdapterBlock", None)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        **schema,
    }
