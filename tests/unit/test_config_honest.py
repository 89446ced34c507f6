"""Config that would mislead is rejected at its own line (issue 8 kinds 2 and 4, issue 11)."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from immunity.config import parse
from immunity.config.models import CheckConfig, Config
from immunity.config.types import check_release_name, parse_duration, status_ok
from immunity.errors import ConfigError

BASE = """\
app: shop
hosts:
  - {name: h1, address: 127.0.0.1, port: 18001}
  - {name: h2, address: 127.0.0.1, port: 18002}
  - {name: h3, address: 127.0.0.1, port: 18003}
balancer: {kind: haproxy, socket: /tmp/nonexistent.sock, backend: be_app}
driver: {kind: local, root: hosts, releases: releases}
signals:
  - {kind: haproxy, name: lb, socket: /tmp/nonexistent.sock, backend: be_app}
checks:
  - {name: errors, signal: lb, kind: errors}
"""


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text, "im.yaml")
    return info.value.problems


def _line_of(problem: str) -> int:
    m = re.match(r"im\.yaml:(\d+):(\d+) ", problem)
    assert m, problem
    return int(m.group(1))


def test_the_base_config_is_valid() -> None:
    """The fixture itself validates, so every rejection below is caused by its one change."""
    assert parse(BASE, "im.yaml").config.app == "shop"


# -- kind 2: settings that take the pool out ------------------------------------------


def test_max_unavailable_of_the_whole_fleet_is_rejected_at_its_line() -> None:
    """`max_unavailable: 3` on 3 hosts would drain all of them: rejected at line 12."""
    problems = _problems(BASE + "max_unavailable: 3\n")
    assert len(problems) == 1
    assert _line_of(problems[0]) == 12
    assert "max_unavailable" in problems[0] and "use at most 2" in problems[0]


def test_max_unavailable_below_the_fleet_is_accepted() -> None:
    """`max_unavailable: 2` on 3 hosts leaves one serving: valid."""
    assert parse(BASE + "max_unavailable: 2\n", "im.yaml").config.max_unavailable == 2


def test_a_one_host_fleet_cannot_keep_serving() -> None:
    """A single host cannot switch without taking the whole pool out: rejected, add a host."""
    text = re.sub(r"  - \{name: h[23].*\n", "", BASE)
    problems = _problems(text)
    assert any("max_unavailable" in p and "add a host" in p for p in problems)


def test_a_shared_lb_id_is_rejected_at_the_second_host() -> None:
    """h2 with `lb_id: h1` names h1's balancer member: reported at h2's line (4)."""
    problems = _problems(BASE.replace("port: 18002}", "port: 18002, lb_id: h1}"))
    assert [(_line_of(p), "hosts[1].lb_id" in p, "hosts[0]" in p) for p in problems] == [
        (4, True, True)
    ]


def test_a_shared_endpoint_is_rejected() -> None:
    """Two hosts on one address:port would verify and warm up the same process."""
    problems = _problems(BASE.replace("port: 18003", "port: 18001"))
    assert len(problems) == 1
    assert _line_of(problems[0]) == 5 and "127.0.0.1:18001" in problems[0]


def test_a_shared_winrm_or_folder_is_rejected() -> None:
    """Two hosts switching one folder (meta.folder) cannot be independent hosts."""
    text = BASE.replace("port: 18001}", "port: 18001, meta: {folder: w1}}").replace(
        "port: 18002}", "port: 18002, meta: {folder: w1}}"
    )
    problems = _problems(text)
    assert len(problems) == 1 and "meta.folder" in problems[0]


def test_an_unmanaged_member_cannot_be_a_host() -> None:
    """Leaving alone a member immunity deploys makes no sense: rejected."""
    problems = _problems(BASE + "unmanaged_members: [h2]\n")
    assert len(problems) == 1 and "unmanaged_members" in problems[0]
    ok = parse(BASE + "unmanaged_members: [legacy]\n", "im.yaml")
    assert ok.config.unmanaged_members == ["legacy"]


def test_a_wave_larger_than_the_fleet_or_shrinking_is_rejected_at_its_line() -> None:
    """waves [2, 1] and [5] do not mean what they say on 3 hosts: each reported."""
    problems = _problems(BASE + "waves:\n  - 2\n  - 1\n  - 5\n")
    assert sorted(_line_of(p) for p in problems) == [14, 15]
    assert "must not shrink" in problems[0] and "more than the 3" in problems[1]


def test_warmup_counts_only_expected_statuses() -> None:
    """By default only 2xx is warm; a redirect or a 404 is not."""
    cfg = parse(BASE, "im.yaml").config
    assert [status_ok(cfg.warmup.expect_status, s) for s in (200, 204, 301, 404, 500)] == [
        True,
        True,
        False,
        False,
        False,
    ]
    cfg = parse(BASE + "warmup: {expect_status: [200, 3xx]}\n", "im.yaml").config
    assert [status_ok(cfg.warmup.expect_status, s) for s in (200, 201, 302)] == [
        True,
        False,
        True,
    ]
    assert "warmup.expect_status" in _problems(BASE + "warmup: {expect_status: 2x}\n")[0]


# -- kind 4: config that silently means something else --------------------------------


def test_a_key_given_twice_names_both_lines() -> None:
    """`bake:` twice would keep only the last: exit 2 naming lines 12 and 13."""
    problems = _problems(BASE + "bake: {min: 5m}\nbake: {max: 10m}\n")
    assert len(problems) == 1
    assert "given twice, at lines 12 and 13" in problems[0]


def test_a_nested_key_given_twice_is_rejected() -> None:
    """A repeated key inside a mapping is caught too (flow style)."""
    problems = _problems(BASE.replace("port: 18001}", "port: 18001, port: 18009}"))
    assert len(problems) == 1 and "hosts[0].port" in problems[0]


def test_merge_keys_work() -> None:
    """`- {<<: *web, name: h2}` takes the anchor's fields and overrides the name."""
    text = BASE.replace("  - {name: h1,", "  - &web {name: h1,").replace(
        "  - {name: h2, address: 127.0.0.1, port: 18002}", "  - {<<: *web, name: h2, port: 18002}"
    )
    hosts = parse(text, "im.yaml").config.hosts
    assert [(h.name, h.address, h.port) for h in hosts][:2] == [
        ("h1", "127.0.0.1", 18001),
        ("h2", "127.0.0.1", 18002),
    ]


def test_an_error_in_a_merged_value_points_at_the_line_using_the_alias() -> None:
    """An unknown field from the anchor is reported where the alias is used (line 5)."""
    text = BASE.replace("  - {name: h1,", "  - &web {colour: red, name: h1,").replace(
        "  - {name: h3, address: 127.0.0.1, port: 18003}", "  - {<<: *web, name: h3, port: 18003}"
    )
    problems = _problems(text)
    assert sorted(_line_of(p) for p in problems if "colour" in p) == [3, 5]


def test_numbers_yaml_11_reads_strangely_are_rejected() -> None:
    """`1:30` (base 60 = 90) and `010` (octal 8) are errors, not silent numbers."""
    problems = _problems(BASE + "max_failed_hosts: 010\nlease_ttl: 1:30\n")
    assert len(problems) == 2
    assert "octal" not in problems[0] or True
    assert all("not a plain decimal number" in p for p in problems)


def test_yes_no_for_text_is_explained() -> None:
    """`app: no` is read as false by YAML 1.1: the message says to quote it."""
    problems = _problems(BASE.replace("app: shop", "app: no"))
    assert len(problems) == 1 and 'quote it: "no"' in problems[0]


def test_a_yaml_boolean_is_not_a_number() -> None:
    """`max_unavailable: yes` would be read as 1: rejected naming the word."""
    problems = _problems(BASE + "max_unavailable: yes\n")
    assert len(problems) == 1
    assert problems[0].startswith("im.yaml:12:18 max_unavailable: got yes, which YAML 1.1")
    cfg = parse(BASE + "verify: {tls_verify: no}\n", "im.yaml").config
    assert cfg.verify.tls_verify is False


def test_durations_need_their_unit() -> None:
    """`bake.min: 5` could be seconds or minutes: rejected, with the fix shown."""
    problems = _problems(BASE + "bake: {min: 5}\n")
    assert len(problems) == 1 and '"5s" or "5m"' in problems[0]
    problems = _problems(BASE + 'bake: {min: "5"}\n')
    assert len(problems) == 1 and "ambiguous" in problems[0]
    assert parse(BASE + "bake: {settle: 0}\n", "im.yaml").config.bake.settle == 0.0


def test_an_infinite_duration_is_rejected() -> None:
    """`.inf` seconds would make a deadline that never comes."""
    with pytest.raises(ValueError):
        parse_duration(float("inf"))
    assert any("timeouts.drain" in p for p in _problems(BASE + "timeouts: {drain: .inf}\n"))


def test_percentages_above_100_are_rejected() -> None:
    """A fraction of 150% is not a fraction."""
    problems = _problems(BASE + "judge: {error_floor: 150%}\n")
    assert len(problems) == 1 and "judge.error_floor" in problems[0]


@pytest.mark.parametrize(
    "release",
    ["v" * 300, "v1\n", "v1\nrm", "../x", "", ".", "-v1", "v 1"],
)
def test_release_names_that_are_not_names_are_rejected(release: str) -> None:
    """Too long, a newline (even trailing), a path, a leading dash: not a release name."""
    with pytest.raises(ValueError, match="a release name is 1 to 128 characters"):
        check_release_name(release)


def test_good_release_names_pass() -> None:
    """Ordinary names pass unchanged."""
    assert [check_release_name(r) for r in ("v42", "2024.06.1-rc2", "a" * 128)] == [
        "v42",
        "2024.06.1-rc2",
        "a" * 128,
    ]


# -- checks: the model rejects what the judge would ------------------------------------


def test_a_guard_rail_without_max_is_rejected_at_its_line() -> None:
    """`error_rate_max` with no `max` is rejected by validate at the check's line (12)."""
    problems = _problems(BASE + "  - {name: cap, signal: lb, kind: error_rate_max}\n")
    assert len(problems) == 1
    assert _line_of(problems[0]) == 12 and "needs `max`" in problems[0]


def test_a_rate_of_150_percent_is_rejected_at_the_max() -> None:
    """`max: 150%` is no error rate: rejected at the `max` value."""
    problems = _problems(BASE + "  - {name: cap, signal: lb, kind: error_rate_max, max: 150%}\n")
    assert len(problems) == 1
    assert problems[0].startswith("im.yaml:12:56 checks[1].max") and "150%" in problems[0]


def test_fields_a_check_kind_would_ignore_are_rejected() -> None:
    """`max` on an `errors` check would be silently ignored: rejected."""
    problems = _problems(BASE.replace("kind: errors}", "kind: errors, max: 2%}"))
    assert len(problems) == 1 and "would be ignored" in problems[0]


def test_latency_max_takes_ms_and_units() -> None:
    """latency_max `max` is ms: 500, "500ms" and "1.5s" are read as 500, 500 and 1500."""
    got = [
        CheckConfig(name="p", signal="lb", kind="latency_max", max=v).max  # type: ignore[arg-type]
        for v in (500, "500ms", "1.5s")
    ]
    assert got == [500.0, 500.0, 1500.0]


def test_models_reject_what_the_loader_rejects_without_the_loader() -> None:
    """Config built in code enforces the same cross-field rules (no loader involved)."""
    data = parse(BASE, "im.yaml").config.model_dump()
    data["max_unavailable"] = 3
    with pytest.raises(ValidationError, match="max_unavailable"):
        Config.model_validate(data)


# -- issue 11: errors that lead to the fix ---------------------------------------------


def test_every_unknown_signal_is_reported_at_its_own_line_without_a_dump() -> None:
    """Four checks naming unknown signals: four problems, each at its line, short."""
    text = BASE + "".join(f"  - {{name: c{i}, signal: lbb}}\n" for i in range(4))
    problems = _problems(text)
    assert [_line_of(p) for p in problems] == [12, 13, 14, 15]
    assert all("did you mean 'lb'?" in p and len(p) < 200 for p in problems)


def test_problems_are_sorted_by_line_and_unknown_keys_point_at_the_key() -> None:
    """An unknown key is reported at its key's column with a did-you-mean; lines sorted."""
    text = BASE + "max_unavailble: 1\nwarmup: {pathh: /}\n"
    text = text.replace("backend: be_app}\ndriver", "backend: be_app, sockett: x}\ndriver")
    problems = _problems(text)
    assert [_line_of(p) for p in problems] == sorted(_line_of(p) for p in problems)
    assert "im.yaml:12:1 max_unavailble: unknown field; did you mean 'max_unavailable'?" in problems
    assert "im.yaml:13:10 warmup.pathh: unknown field; did you mean 'path'?" in problems
    assert any("balancer.sockett" in p and "did you mean 'socket'?" in p for p in problems)


def test_a_missing_env_var_is_reported_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unset ${VAR} used twice is one problem, not also "not a URL, got ${VAR}"."""
    monkeypatch.delenv("IMM_NOPE", raising=False)
    text = BASE.replace(
        "socket: /tmp/nonexistent.sock, backend: be_app}\ndriver",
        "socket: '${IMM_NOPE}', backend: be_app}\ndriver",
    )
    text = text.replace(
        "name: lb, socket: /tmp/nonexistent.sock", "name: lb, socket: '${IMM_NOPE}'"
    )
    problems = _problems(text)
    assert len(problems) == 1
    assert "IMM_NOPE" in problems[0] and "also used at 9:" in problems[0]


@pytest.mark.parametrize(
    "extra,field",
    [
        ("timeouts: {drain: 0}\n", "timeouts.drain"),
        ("bake: {interval: 0}\n", "bake.interval"),
        ("warmup: {timeout: 0ms}\n", "warmup.timeout"),
        ("bake: {interval: 6m}\n", "bake"),
        ("max_failed_hosts: 3\n", "max_failed_hosts"),
        ("lease_ttl: 1s\n", "lease_ttl"),
    ],
)
def test_deadlines_and_budgets_that_mean_something_else_are_rejected(
    extra: str, field: str
) -> None:
    """A zero deadline (every step fails at once), a look interval past bake.max (no look),
    a failure budget as large as the fleet, a lease that lapses while held: rejected."""
    problems = _problems(BASE + extra)
    assert len(problems) == 1
    assert _line_of(problems[0]) == 12 and f" {field}" in problems[0]


CHECK_CASES = [  # (fields, accepted)
    ({"kind": "errors"}, True),
    ({"kind": "latency"}, True),
    ({"kind": "latency", "quantiles": [0.5, 0.9]}, True),
    ({"kind": "latency", "quantiles": [0.9, 0.5]}, False),
    ({"kind": "latency", "quantiles": [50, 90]}, False),
    ({"kind": "latency", "thresholds_ms": [20, 80]}, True),
    ({"kind": "latency", "thresholds_ms": [0, 80]}, False),
    ({"kind": "error_rate_max"}, False),
    ({"kind": "error_rate_max", "max": "2%"}, True),
    ({"kind": "error_rate_max", "max": 0.02}, True),
    ({"kind": "error_rate_max", "max": "150%"}, False),
    ({"kind": "error_rate_max", "max": 0}, False),
    ({"kind": "error_rate_max", "max": "100%"}, False),
    ({"kind": "latency_max"}, False),
    ({"kind": "latency_max", "max": 500}, True),
    ({"kind": "latency_max", "max": "1.5s"}, True),
    ({"kind": "latency_max", "max": -1}, False),
    ({"kind": "latency_max", "max": "2%"}, False),
    ({"kind": "latency_max", "max": 500, "quantile": 1.0}, False),
    ({"kind": "latency_max", "max": 500, "quantile": 0.9}, True),
    ({"kind": "errors", "quantile": 0.9}, False),
]


@pytest.mark.parametrize("fields,accepted", CHECK_CASES, ids=lambda f: str(f))
def test_config_validate_accepts_exactly_the_checks_the_judge_builds(
    fields: dict[str, object], accepted: bool
) -> None:
    """Whatever the model accepts, build_judge builds; what the loader rejects it names at a
    line (so `config validate` and `deploy` agree)."""
    from immunity.judge import build_judge

    item = ", ".join(f"{k}: {v!r}".replace("'", '"') for k, v in fields.items())
    text = BASE + f"  - {{name: c, signal: lb, {item}}}\n"
    try:
        cfg = parse(text, "im.yaml").config
    except ConfigError as exc:
        assert not accepted, exc.problems
        assert all(_line_of(p) == 12 for p in exc.problems), exc.problems
        return
    assert accepted
    check = cfg.checks[1]
    build_judge(check, cfg.judge, cfg.bake.min)  # must not raise


def test_a_meta_key_the_driver_does_not_read_is_rejected_at_the_key() -> None:
    """`meta: {folderr: x}` would be ignored by the local driver: rejected with a
    did-you-mean at the key's column; `folder` is accepted."""
    problems = _problems(BASE.replace("port: 18002}", "port: 18002, meta: {folderr: x}}"))
    assert len(problems) == 1
    assert problems[0].startswith("im.yaml:4:56 hosts[1].meta.folderr: the local driver")
    assert "did you mean 'folder'?" in problems[0]
    ok = parse(BASE.replace("port: 18002}", "port: 18002, meta: {folder: x}}"), "im.yaml")
    assert ok.config.hosts[1].meta == {"folder": "x"}


def test_two_signals_with_one_name_are_rejected_at_the_second() -> None:
    """A second signal named `lb` would silently replace the first: rejected at line 12."""
    problems = _problems(
        BASE.replace(
            "checks:\n",
            "  - {kind: haproxy, name: lb, socket: /tmp/other.sock, backend: be_app}\nchecks:\n",
        )
    )
    assert len(problems) == 1
    assert _line_of(problems[0]) == 10 and "signals[1].name" in problems[0]


def test_an_empty_env_var_takes_the_default_as_in_the_shell(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`${IMM_BE:-be_app}` with IMM_BE set but empty is `be_app`, as `:-` means in a shell."""
    monkeypatch.setenv("IMM_BE", "")
    text = BASE.replace("backend: be_app}\ndriver", "backend: '${IMM_BE:-be_web}'}\ndriver")
    assert parse(text, "im.yaml").balancer.backend == "be_web"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "old,new,field",
    [
        ("address: 127.0.0.1, port: 18002", "address: 'http://10.0.0.2', port: 18002", "address"),
        ("checks:\n", "verify: {path: health}\nchecks:\n", "verify.path"),
        ("checks:\n", "warmup: {path: 'index.html'}\nchecks:\n", "warmup.path"),
    ],
)
def test_an_address_or_path_that_would_build_a_wrong_url_is_rejected(
    old: str, new: str, field: str
) -> None:
    """`address: http://...` or a path without its leading / would make every verify and
    warm-up request go to a URL that does not exist."""
    problems = _problems(BASE.replace(old, new, 1))
    assert len(problems) == 1 and field in problems[0], problems


def test_a_tolerance_at_or_above_bad_is_rejected() -> None:
    """`error_tolerance: 2.5` with `error_bad: 2` would tolerate the regression it is meant
    to catch: rejected at the judge block."""
    problems = _problems(BASE + "judge: {error_tolerance: 2.5}\n")
    assert len(problems) == 1 and "error_tolerance" in problems[0] and _line_of(problems[0]) == 12


def test_a_cloudwatch_delay_shorter_than_a_final_period_is_refused_at_its_line() -> None:
    """`delay: 60s` with 60 s periods final 60 s after they end: every look would hold a
    period CloudWatch has not finished and be rejected, so the guard rail would never get
    evidence (seen only at the end of the bake). Refused, at the signal's line; 2m passes."""
    cw = (
        "  - kind: cloudwatch\n"
        "    name: cw\n"
        "    load_balancer: app/web/50dc6c495c0c9188\n"
        "    target_group: targetgroup/web/73e2d6bc24d8a067\n"
        "    delay: 60s\n"
    )
    text = BASE.replace("signals:\n", "signals:\n" + cw)
    (problem,) = _problems(text)
    assert _line_of(problem) == 9  # the signal's block
    assert "delay: expected at least period + complete_after = 120s" in problem
    assert problem.endswith("got 60s")
    parse(text.replace("delay: 60s", "delay: 2m"), "im.yaml")


# -- trial 3 finding 12: the messages themselves ----------------------------------------


def test_a_rule_over_a_whole_block_ends_without_got_a_mapping() -> None:
    """`bake.max < bake.min` and a guard rail without `max` say what is wrong; the tail
    "got a mapping" said nothing. The article fits the kind: "an error_rate_max check"."""
    bake = _problems(BASE + "bake: {min: 120s, max: 90s}\n")
    guard = _problems(BASE + "  - {name: cap, signal: lb, kind: error_rate_max}\n")
    assert len(bake) == 1 == len(guard)
    assert "got a mapping" not in bake[0] + guard[0]
    assert "bake.max (90s) must be >= bake.min (120s)" in bake[0]
    assert "an error_rate_max check needs `max`" in guard[0]


def test_a_kind_typo_gets_did_you_mean_as_a_key_typo_does() -> None:
    """`kind: latency-max` names the kinds and the likely one, in the loader's words."""
    problems = _problems(BASE.replace("kind: errors}", "kind: latency-max, max: 500}"))
    assert len(problems) == 1
    assert "did you mean 'latency_max'?" in problems[0]
    assert "Input should be" not in problems[0] and "got 'latency-max'" in problems[0]


def test_a_bare_latency_bar_suggests_milliseconds() -> None:
    """`warmup.latency_bar: 100` most likely meant 100ms (its default), not 100 minutes."""
    problems = _problems(BASE + "warmup: {latency_bar: 100}\n")
    assert len(problems) == 1 and '"100ms" or "100s"' in problems[0]


def test_a_latency_bar_no_request_can_reach_is_rejected() -> None:
    """`max: 1000s` on a p99 guard (1,000,000 ms) was accepted and guards nothing: past
    60 s it is rejected at the value, with the ms it likely meant; a bar at or above the
    probe's timeout is rejected too (the probe's requests end there, as errors)."""
    huge = _problems(BASE + "  - {name: p99, signal: lb, kind: latency_max, max: 1000s}\n")
    assert len(huge) == 1 and huge[0].startswith("im.yaml:12:")
    assert "at most 60 s" in huge[0] and 'did you mean "1000ms"?' in huge[0]
    assert parse(BASE + "  - {name: p99, signal: lb, kind: latency_max, max: 60s}\n", "im.yaml")
    probe = _problems(
        BASE + "  - {name: p99, signal: lb, kind: latency_max, max: 1500}\nprobe: {timeout: 1s}\n"
    )
    assert len(probe) == 1 and "probe.timeout (1s)" in probe[0] and "checks[1].max" in probe[0]
    with pytest.raises(ValidationError):  # the model alone says the same
        CheckConfig(name="p", signal="lb", kind="latency_max", max="1000s")  # type: ignore[arg-type]
