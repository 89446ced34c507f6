"""What the CLI prints for config problems and abnormal ends (issue 11 items 3-5)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from immunity import __version__
from immunity.cli.app import app
from immunity.cli.output import next_step

CONFIG = """\
app: shop
hosts:
  - {name: h1, address: 127.0.0.1, port: 18001}
  - {name: h2, address: 127.0.0.1, port: 18002}
balancer: {kind: haproxy, socket: /tmp/x.sock, backend: be_app}
driver: {kind: local, root: hosts, releases: releases}
signals:
  - {kind: haproxy, name: lb, socket: /tmp/x.sock, backend: be_app}
checks:
  - {name: errors, signal: lb, kind: errors}
"""


def test_version_prints_the_package_version() -> None:
    """`immunity --version` prints the version and exits 0."""
    r = CliRunner().invoke(app, ["--version"])
    assert (r.exit_code, r.output.strip()) == (0, f"immunity {__version__}")


def test_help_shows_no_value_type_for_a_flag() -> None:
    """Trial 3 finding 13: `--version <bool>` and `--help <bool>` read as if they took a
    value; a flag shows none, an option with a value still shows its type."""
    top = CliRunner().invoke(app, ["--help"], terminal_width=100)
    deploy = CliRunner().invoke(app, ["deploy", "--help"], terminal_width=100)
    assert 0 == top.exit_code == deploy.exit_code
    assert "<bool>" not in top.output + deploy.output
    assert "--version" in top.output and "--dry-run" in deploy.output
    assert "<str>" in deploy.output  # --release takes a value


SERVED = """\
app: shop
hosts:
  - {{name: h1, address: 127.0.0.1, port: 18001}}
  - {{name: h2, address: 127.0.0.1, port: 18002}}
balancer: {{kind: haproxy, socket: nowhere.sock, backend: be_app}}
driver: {{kind: local, root: hosts, releases: releases}}
signals:
  - {{kind: haproxy, name: lb, socket: nowhere.sock, backend: be_app}}
checks:
  - {{name: errors, signal: lb, kind: errors}}
journal: {{path: {journal}}}
"""


def test_serve_refuses_two_configs_of_the_same_app(tmp_path: Path) -> None:
    """Trial 3 finding 13: two configs both `app: shop` showed two fleets and one list of
    deployments nobody could tell apart ("serving shop, shop"); refused, exit 2, naming
    both files and the way out, before anything is served."""
    paths = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        path = tmp_path / name / "immunity.yaml"
        path.write_text(SERVED.format(journal=tmp_path / name / "journal.db"))
        paths.append(str(path))
    r = CliRunner().invoke(app, ["serve", "-c", paths[0], "-c", paths[1], "--port=-1"])
    assert 2 == r.exit_code, r.output
    assert "app 'shop' is named by 2 configs" in r.output
    assert paths[0] in r.output and paths[1] in r.output and "own `app:` name" in r.output


def test_a_location_is_printed_verbatim_not_as_an_emoji(tmp_path: Path) -> None:
    """`file.yaml:100:1` stays as written (rich would turn `:100:` into an emoji)."""
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG + "#\n" * 89 + "bogus_key: [x]\n")
    r = CliRunner().invoke(app, ["config", "validate", str(path)])
    assert r.exit_code == 2
    assert f"{path}:100:1 bogus_key: unknown field" in r.output
    assert f"immunity config validate {path}" in r.output


def test_markup_in_user_text_is_printed_as_text(tmp_path: Path) -> None:
    """A value that looks like rich markup (`[red]`) is printed as it is."""
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG.replace("kind: errors}", "kind: '[bold]errors[/]'}"))
    r = CliRunner().invoke(app, ["config", "validate", str(path)])
    assert r.exit_code == 2 and "'[bold]errors[/]'" in r.output


def test_config_schema_is_a_json_schema_the_sandbox_config_satisfies(tmp_path: Path) -> None:
    """`immunity config schema` prints a valid JSON Schema that accepts a valid config (as
    an editor would read it) and rejects an unknown field."""
    r = CliRunner().invoke(app, ["config", "schema"])
    assert r.exit_code == 0
    schema = json.loads(r.output)
    jsonschema.Draft202012Validator.check_schema(schema)
    good = yaml.safe_load(CONFIG + 'bake: {min: "30s"}\nmax_unavailable: 1\n')
    jsonschema.validate(good, schema)
    assert schema["properties"]["balancer"]["oneOf"]
    bad = {**good, "max_unavailble": 1}
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(bad))
    assert any("max_unavailble" in e.message for e in errors)


def test_every_abnormal_end_names_the_next_command() -> None:
    """Interrupted, held, reverted and revert-incomplete each say what to run next."""
    assert "`immunity resume -c c.yaml`" in next_step("interrupted", "c.yaml")
    assert "`immunity resume -c c.yaml --abort`" in next_step("terminated", "c.yaml")
    assert "`immunity resume -c c.yaml --abort`" in next_step("held", "c.yaml")
    assert "`immunity rollback -c c.yaml`" in next_step("revert_incomplete", "c.yaml", ["h1"])
    assert "look at h1" in next_step("revert_incomplete", "c.yaml", ["h1"])
    # the README's way to see why a release was reverted (trial 4 #3: it said `history`)
    assert "see why with `immunity show -c c.yaml d1`," in next_step(
        "reverted", "c.yaml", deployment_id="d1"
    )
    assert "`immunity show -c c.yaml`" in next_step("inconclusive", "c.yaml")
    assert next_step("deployed", "c.yaml") == ""


def test_an_inconclusive_end_says_what_would_get_the_release_judged() -> None:
    """Three reasons, three next steps: no traffic names the probe (add it; or raise its rate
    and its share), a signal that failed needs fixing (not traffic), a starved canary needs
    its share from the balancer."""
    from immunity.config.models import ProbeConfig

    quiet = (
        "inconclusive: not enough evidence to judge v2: errors: the signal sees no traffic "
        "on either cohort for 60 s (no customer traffic, or the signal cannot see it)"
    )
    no_probe = next_step("inconclusive", "c.yaml", reason=quiet)
    assert "there was no traffic to judge" in no_probe and "bake.max" not in no_probe
    thin = next_step("inconclusive", "c.yaml", reason="errors: insufficient information at max")
    assert "too little traffic to judge" in thin and "lengthen bake.max" in thin
    assert "add a `probe` block to c.yaml" in no_probe and "rate: 10" in no_probe
    slow = next_step("inconclusive", "c.yaml", reason=quiet, probe=ProbeConfig(rate=4))
    assert (
        "no traffic to judge, even with the probe" in slow
        and "raise `probe.rate` (now 4 requests/s" in slow
    )
    assert "max_share" not in slow
    capped = next_step(
        "inconclusive", "c.yaml", reason=quiet, probe=ProbeConfig(rate=4, max_share=0.2)
    )
    assert "raise `probe.max_share` (now 20%" in capped
    failed = next_step(
        "inconclusive",
        "c.yaml",
        reason="inconclusive: not enough evidence to judge v2: no evidence: signal lb failed "
        "(10 look(s) in a row): access log unreadable (limit 10 looks)",
    )
    assert "a signal could not be read" in failed and "probe" not in failed
    held = next_step("held", "c.yaml", reason=quiet)
    assert "`immunity resume -c c.yaml`" in held and "add a `probe` block" in held
    starved = next_step(
        "inconclusive",
        "c.yaml",
        reason="inconclusive: not enough evidence to judge v2: errors: the canary gets too "
        "little of the traffic: none of the 2,400 requests of the last 60 s",
        probe=ProbeConfig(),
    )
    assert "less than its share" in starved and "weight" in starved


def test_a_bad_release_name_exits_2_saying_what_a_name_may_be(tmp_path: Path) -> None:
    """`deploy --release` with a newline exits 2 before the config is even read."""
    r = CliRunner().invoke(app, ["deploy", "-c", str(tmp_path / "nope.yaml"), "--release", "v2\n"])
    assert r.exit_code == 2
    assert "a release name is 1 to 128 characters" in r.output


def test_errors_without_a_command_in_their_hint_get_a_next_step() -> None:
    """A journal error says what to run next; a config error's hint already names it."""
    from immunity.cli.output import error_next_step
    from immunity.errors import ConfigError, JournalError, JournalLocked, PreflightError

    assert "`immunity resume -c <config>`" in error_next_step(JournalError("disk full"))
    assert "nothing was touched" in error_next_step(PreflightError("h1 answers nothing"))
    stuck = JournalLocked(  # PostgreSQL's hint names SQL, not a command of ours
        "journal write waited 15s for a lock", hint="end it (`SELECT pg_terminate_backend(7)`)"
    )
    assert "run the same command again" in error_next_step(stuck)
    done = ConfigError(
        "x", hint="fix the lines above, then check again: immunity config validate c"
    )
    assert "" == error_next_step(done)


def test_the_sandbox_config_satisfies_the_schema() -> None:
    """The config `immunity sandbox up` writes (percentages, ms bounds, durations) is valid
    for an editor using `immunity config schema`."""
    from immunity.config.schema import json_schema
    from immunity.sandbox.fleet import immunity_yaml

    data = yaml.safe_load(immunity_yaml("shop", {"h1": 18001, "h2": 18002, "h3": 18003}))
    jsonschema.validate(data, json_schema())


def test_every_refusal_ends_with_one_next_line_never_a_hint(tmp_path: Path) -> None:
    """A refused command (nothing to resume, nothing to show, a bad config, a sandbox that
    does not exist) ends with one `next:` line, as every failed run does; none says
    `hint:` (the refused deploy, `show`, `resume` and the sandbox commands did)."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG + "journal: {path: journal.db}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG + "bogus_key: 1\n")
    runs = [
        ["resume", "-c", str(cfg)],
        ["show", "-c", str(cfg)],
        ["config", "validate", str(bad)],
        ["sandbox", "release", "--dir", str(tmp_path / "nowhere"), "v9"],
        ["report", "nosuch", "-c", str(cfg)],
    ]
    for args in runs:
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        lines = [line for line in r.output.splitlines() if line.strip()]
        assert lines[-1].startswith("next: "), (args, r.output)
        assert 1 == sum(line.startswith("next: ") for line in lines), (args, r.output)
        assert "hint:" not in r.output and "<config>" not in r.output, (args, r.output)
    # an unknown deployment's next step names the command that lists them, with this config
    assert f"`immunity history -c {cfg}` lists every deployment" in r.output, r.output


def test_serve_lists_a_rollback_by_the_releases_it_moved_in_words() -> None:
    """Trial 3 finding 7/13: the page's deployments list showed `rollback:v5` and
    `rolled_back`; it reads "rollback v5 → v4" and "rolled back"."""
    import datetime as dt

    from immunity.journal.base import DeploymentRecord
    from immunity.serve.views import deployment_row

    at = dt.datetime(2026, 11, 30, 7, 47, tzinfo=dt.UTC)
    rec = DeploymentRecord(
        "d1", "shop", "rollback:v5", at, at, "rolled_back", "rollback requested",
        {"rollback": True, "fallbacks": {"h1": "v4", "h2": "v4"}, "previous": {"h1": "v5"}},
    )  # fmt: skip
    row = deployment_row(rec)
    assert (row["label"], row["said"], row["outcome"]) == (
        "rollback v5 → v4",
        "rolled back",
        "rolled_back",
    )


def test_a_next_line_names_the_config_the_command_was_given(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Hints written below the CLI say `immunity resume -c FILE` (the journal's lease holder,
    `rollback`'s refusals); the `next:` line names the config the command was run with."""
    from immunity.cli.output import show_error
    from immunity.errors import ImmunityError

    class Held(ImmunityError):
        reference = "lease-held"
        exit_code = 5

    hint = "run `immunity resume -c FILE` to take it over (`immunity status -c FILE` shows it)"
    code = show_error(Held("the lease is held by pid 4242 (dead)", hint=hint), "/srv/shop.yaml")
    said = " ".join(capsys.readouterr().err.split())
    assert 5 == code
    assert "`immunity resume -c /srv/shop.yaml` to take it over" in said, said
    assert "`immunity status -c /srv/shop.yaml` shows it" in said and "FILE" not in said, said


def test_a_stopped_revert_or_rollback_is_finished_by_resume_not_deployed_further() -> None:
    """Trial 4 finding 14: Ctrl-C during `resume --abort` advised "finish the deployment with
    `immunity resume`", read as "go forward"; now the revert (or rollback) is what `resume`
    finishes, as `show` says, with the hosts in words (the engine's reason, not a list)."""
    abort = (
        "SIGINT received during the revert (aborted with `resume --abort`; v8 was not "
        "judged); hosts in flight finished, h3, h4 not reverted yet: `immunity resume` "
        "finishes the revert"
    )
    said = next_step("interrupted", "c.yaml", reason=abort)
    assert said.startswith("`immunity resume -c c.yaml` finishes the revert"), said
    assert "finish the deployment" not in said and "--abort" not in said
    rolled = "SIGTERM received during the revert (rollback requested); hosts in flight ..."
    said = next_step("terminated", "c.yaml", reason=rolled)
    assert said.startswith("`immunity resume -c c.yaml` finishes the rollback"), said
    assert "finish the deployment with `immunity resume -c c.yaml`" in next_step(
        "interrupted", "c.yaml", reason="SIGINT received; hosts in flight finished"
    )


@pytest.mark.parametrize(
    "args",
    [
        ["config", "schema", "-o", "{bad}"],
        ["config", "docs", "-o", "{bad}"],
        ["bench", "judge", "--quick", "--json", "{bad}"],
        ["bench", "judge", "--quick", "--write-scenarios", "{bad}"],
        ["bench", "scale", "--hosts", "10", "--json", "{bad}"],
        ["sandbox", "load", "--dir", "{tmp}", "--out", "{bad}"],
        ["journal", "copy", "--from", "{tmp}/j.db", "--to", "{tmp}/k.db", "--json", "{bad}"],
        ["report", "x", "-c", "{tmp}/none.yaml", "--html", "{bad}"],
        ["report", "x", "-c", "{tmp}/none.yaml", "--json", "{missing}"],
    ],
)
def test_every_output_file_option_refuses_an_unwritable_path_before_running(
    tmp_path: Path, args: list[str]
) -> None:
    """Trial 4 finding 13's kind: a path through a file, or into a directory that does not
    exist, is refused at once (exit 2, naming the path and why), with no traceback, no
    directory created and nothing run."""
    (tmp_path / "a-file").write_text("")
    subs = {
        "{bad}": str(tmp_path / "a-file" / "x.out"),
        "{missing}": str(tmp_path / "no" / "dir" / "x.json"),
        "{tmp}": str(tmp_path),
    }
    argv = [next((v for k, v in subs.items() if a == k), a) for a in args]
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    r = CliRunner().invoke(app, argv)
    assert r.exit_code == 2, (argv, r.output)
    said = r.output + (r.stderr if r.stderr_bytes is not None else "")
    assert "a-file is a file, not a directory" in said or "/no/dir does not exist" in said, said
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    assert not (tmp_path / "no").exists() and not (tmp_path / "j.db").exists()


def test_serve_stage_of_a_revert_waiting_for_the_balancer() -> None:
    """`serve`'s stage while the revert cannot read the fleet says what it waits for (it
    said the stage before the revert: 'release failed: reverting', 'resumed')."""
    import datetime as dt

    from immunity.journal.base import JournalEntry
    from immunity.serve.views import stage

    at = dt.datetime(2026, 11, 30, tzinfo=dt.UTC)
    entries = [
        JournalEntry(1, "d", at, "deployment.resumed"),
        JournalEntry(2, "d", at, "immune.waiting", data={"reason": "r", "deadline_s": 60.0}),
    ]
    assert stage(entries) == "reverting: waiting for the balancer to answer"
    assert stage(entries[:1]) == "resumed"


@pytest.mark.parametrize(
    "onset", [["--errors-from-file", "fault"], ["--errors-after-s", "30"]], ids=["file", "after"]
)
def test_sandbox_release_with_an_error_onset_but_no_error_rate_is_refused(
    tmp_path: Path, onset: list[str]
) -> None:
    """Trial 4 #15: `sandbox release v8 --errors-from-file F` wrote `"error_rate": 0.0`, so
    touching F started a fault of 0% and the release passed every wave. Without
    --error-rate it is refused (exit 2, what to add) and no manifest is written."""
    import subprocess
    import sys

    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "immunity",
            "sandbox",
            "release",
            "--dir",
            str(tmp_path),
            "v8",
            *onset,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"error: {onset[0]} say(s) when errors begin, not how many" in r.stderr
    assert "next: add --error-rate" in r.stderr
    assert not (tmp_path / "releases").exists()
    help_text = subprocess.run(
        [sys.executable, "-m", "immunity", "sandbox", "release", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    ).stdout
    assert help_text.count("With --error-rate") == 2, help_text
