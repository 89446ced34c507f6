"""docs/config.md is generated from the config models and kept current."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from immunity.config.reference import attribute_docs, core_models, markdown, undocumented

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def test_every_core_field_has_a_docstring() -> None:
    """A field of immunity.yaml without a docstring would be a blank line in the reference."""
    assert [] == undocumented()


def test_every_adapter_field_has_a_docstring() -> None:
    """Each installed adapter's settings are documented too (they appear in docs/config.md)."""
    from immunity.config.schema import adapter_settings

    missing = [
        f"{role} {kind}.{name}"
        for role in ("lb", "hosts", "signals", "notify")
        for kind, model in adapter_settings(role).items()
        for name, info in model.model_fields.items()
        if not (info.description or attribute_docs(model).get(name))
    ]
    assert [] == missing


def test_docs_config_md_is_what_the_models_say() -> None:
    """docs/config.md matches the models; regenerate with `immunity config docs -o docs/config.md`."""
    assert DOC.read_text() == markdown(), "run: immunity config docs -o docs/config.md"


def test_every_core_field_appears_in_the_reference() -> None:
    """Each field of each section has a row of its own in docs/config.md."""
    text = DOC.read_text()
    for path, model in core_models():
        section = text.split(f"## `{path}`", 1)[1].split("\n## ", 1)[0]
        for name in model.model_fields:
            assert f"| `{name}` |" in section, f"{path}.{name}"


def test_attribute_docs_reads_the_docstring_under_a_field() -> None:
    """The docstring written under a field is that field's documentation."""

    class Sample(BaseModel):
        a: int = 1
        """The a."""
        b: int = 2

    assert attribute_docs(Sample) == {"a": "The a."}


def test_each_notifier_documents_its_own_url_and_every_kind_is_listed() -> None:
    """Trial 4 #21: teams' and webhook's `url` said `${SLACK_WEBHOOK_URL}` (copied from
    slack), the notify row left out pushgateway, and alpha was "spent evenly"."""
    from immunity.config.reference import markdown

    text = markdown()
    sections = {s.split("`", 1)[0]: s for s in text.split("## `notify: kind ")[1:]}
    for kind in ("teams", "webhook"):
        url = next(line for line in sections[kind].splitlines() if line.startswith("| `url`"))
        assert "SLACK" not in url, url
    assert "(slack, teams, webhook, statsd, pushgateway)" in text
    assert "spent evenly" not in text
