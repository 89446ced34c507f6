"""How ElasticsearchSource reads field types out of index mappings, and its settings."""

from __future__ import annotations

from typing import Any

import pytest

from immunity.signals.elasticsearch import ElasticsearchSource, _field_type, _safe_url

MAPPING: dict[str, Any] = {
    "runtime": {"latency_ms": {"type": "double"}},
    "properties": {
        "@timestamp": {"type": "date_nanos"},
        "host": {
            "properties": {"name": {"type": "text", "fields": {"keyword": {"type": "keyword"}}}}
        },
        "http.response.status_code": {"type": "short"},
        "server": {"type": "alias", "path": "host.name"},
        "event": {"properties": {"duration": {"type": "long"}}},
    },
}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("@timestamp", "date_nanos"),
        ("host.name", "text"),
        ("host.name.keyword", "keyword"),
        ("http.response.status_code", "short"),
        ("server", "text"),
        ("latency_ms", "double"),
        ("event", "object"),
        ("event.outcome", None),
        ("nothing.at.all", None),
    ],
)
def test_field_types_follow_objects_dotted_names_multi_fields_aliases_and_runtime(
    path: str, expected: str | None
) -> None:
    """Each way a field can be mapped resolves to its type, or None when unmapped."""
    assert _field_type(MAPPING, path) == expected


def test_safe_url_drops_user_and_password() -> None:
    """URLs shown in messages carry no credentials."""
    assert _safe_url("https://bob:hunter2@es.example:9243/,http://es2:9200") == (
        "https://es.example:9243/,http://es2:9200"
    )


def test_settings_hide_secrets_in_repr() -> None:
    """api_key and password are SecretStr: repr and model_dump show no value."""
    s = ElasticsearchSource.Settings(
        url="https://es:9200", index="logs-*", username="u", password="hunter2"
    )
    assert "hunter2" not in repr(s)
    assert "hunter2" not in str(s.model_dump())


def test_settings_refuse_half_a_login() -> None:
    """A username without a password is a config error."""
    with pytest.raises(ValueError, match="both username and password"):
        ElasticsearchSource.Settings(url="https://es:9200", index="logs-*", username="u")
