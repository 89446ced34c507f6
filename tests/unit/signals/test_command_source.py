"""CommandSource running real executables: what they receive, what they may answer, and how
failures (exit status, timeout, garbage) surface."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

from immunity.domain import Cohort, HostRef
from immunity.errors import PreflightError, SignalError
from immunity.signals.command import CommandSource

pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).resolve().parents[3] / "docs" / "adapters" / "examples"
END = dt.datetime(2026, 5, 4, 12, 30, 5, tzinfo=dt.UTC)
START = END - dt.timedelta(seconds=5)
WEB1 = HostRef(name="web1", address="10.0.0.1", port=8001, lb_id="i-01")
WEB2 = HostRef(name="web2", address="10.0.0.2", port=8002)
WEB3 = HostRef(name="web3", address="10.0.0.3", port=8003)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def script(tmp_path: Path, body: str, name: str = "metric.py") -> Path:
    """An executable Python script in tmp_path."""
    path = tmp_path / name
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


def source(tmp_path: Path, command: list[str], **kw: object) -> CommandSource:
    return CommandSource(CommandSource.Settings(command=command, **kw), base_dir=tmp_path)


async def test_each_cohort_gets_its_hosts_on_stdin_and_in_env(tmp_path: Path) -> None:
    """Stdin JSON and IMMUNITY_* variables describe the same cohort and window."""
    script(
        tmp_path,
        """
        import json, os, sys
        doc = json.load(sys.stdin)
        env = {k: v for k, v in os.environ.items() if k.startswith("IMMUNITY_")}
        with open(f"seen-{doc['cohort']}.json", "w") as f:
            json.dump({"stdin": doc, "env": env}, f)
        print(json.dumps({"requests": 100 * len(doc["hosts"]), "errors": len(doc["hosts"])}))
        """,
    )
    src = source(tmp_path, ["./metric.py"], name="orders")
    obs = await src.observe({Cohort.CANARY: [WEB1], Cohort.BASELINE: [WEB2, WEB3]}, START, END)
    assert (obs[Cohort.CANARY].requests, obs[Cohort.CANARY].errors) == (100, 1)
    assert (obs[Cohort.BASELINE].requests, obs[Cohort.BASELINE].hosts) == (200, 2)
    seen = json.loads((tmp_path / "seen-baseline.json").read_text())
    assert seen["env"] == {
        "IMMUNITY_SIGNAL": "orders",
        "IMMUNITY_COHORT": "baseline",
        "IMMUNITY_HOSTS": "web2,web3",
        "IMMUNITY_ADDRESSES": "10.0.0.2:8002,10.0.0.3:8003",
        "IMMUNITY_START": "2026-05-04T12:30:00.000Z",
        "IMMUNITY_END": "2026-05-04T12:30:05.000Z",
        "IMMUNITY_START_EPOCH": str(int(START.timestamp())),
        "IMMUNITY_END_EPOCH": str(int(END.timestamp())),
    }
    stdin = json.loads((tmp_path / "seen-canary.json").read_text())["stdin"]
    assert stdin["cohort"] == "canary" and stdin["start"] == "2026-05-04T12:30:00.000Z"
    assert stdin["hosts"] == [
        {
            "name": "web1",
            "address": "10.0.0.1",
            "port": 8001,
            "lb_id": "i-01",
            "scheme": "http",
            "meta": {},
        }
    ]


async def test_latency_histogram_is_passed_through(tmp_path: Path) -> None:
    """Bounds and per-bucket counts (with overflow) become the observation's latency."""
    script(
        tmp_path,
        """
        import json
        print(json.dumps({"requests": 10, "errors": 0,
                          "latency_bounds_ms": [50, 100], "latency_buckets": [7, 2, 1]}))
        """,
    )
    obs = await source(tmp_path, ["./metric.py"]).observe({Cohort.CANARY: [WEB1]}, START, END)
    assert obs[Cohort.CANARY].latency_bounds_ms == (50.0, 100.0)
    assert obs[Cohort.CANARY].latency_buckets == (7, 2, 1)


@pytest.mark.parametrize(
    "answer",
    ['{"requests": NaN, "errors": 0}', '{"requests": null, "errors": 0}', '{"available": false}'],
)
async def test_a_command_that_cannot_tell_gives_a_missing_observation(
    tmp_path: Path, answer: str
) -> None:
    """NaN, null or `available: false` is missing data, never a clean zero."""
    script(tmp_path, f"print({answer!r})\n")
    obs = await source(tmp_path, ["./metric.py"]).observe({Cohort.CANARY: [WEB1]}, START, END)
    assert not obs[Cohort.CANARY].available


async def test_non_zero_exit_is_a_signal_error_with_the_stderr_tail(tmp_path: Path) -> None:
    """Exit status 3 raises SignalError carrying the last lines of stderr."""
    script(
        tmp_path,
        """
        import sys
        print("x" * 5000, file=sys.stderr)
        print("Traceback: metrics API said 401", file=sys.stderr)
        sys.exit(3)
        """,
    )
    with pytest.raises(SignalError) as info:
        await source(tmp_path, ["./metric.py"]).observe({Cohort.CANARY: [WEB1]}, START, END)
    assert "exited with status 3" in info.value.message
    assert info.value.message.endswith("Traceback: metrics API said 401")
    assert len(info.value.message) < 1000


@pytest.mark.parametrize(
    ("stdout", "complaint"),
    [
        ("requests=10 errors=1", "not one JSON object"),
        ('{"requests": 1}\n{"requests": 2}', "not one JSON object"),
        ("[1, 2]", "must be a JSON object"),
        ('{"requests": 5, "errors": 9}', "errors (9) > requests (5)"),
        ('{"requests": -1, "errors": 0}', "must be a count"),
        (
            '{"requests": 5, "errors": 0, "latency_bounds_ms": [1], "latency_buckets": [5]}',
            "overflow",
        ),
        ("", "printed nothing"),
    ],
)
async def test_invalid_answers_are_signal_errors(
    tmp_path: Path, stdout: str, complaint: str
) -> None:
    """Output that is not one sensible JSON object raises SignalError saying what is wrong."""
    script(tmp_path, f"import sys; sys.stdout.write({stdout!r})\n")
    with pytest.raises(SignalError, match="invalid answer") as info:
        await source(tmp_path, ["./metric.py"]).observe({Cohort.CANARY: [WEB1]}, START, END)
    assert complaint in info.value.message


async def test_timeout_kills_the_command_and_its_children(tmp_path: Path) -> None:
    """A command past its timeout is killed with its whole process group; a SignalError says so."""
    (tmp_path / "slow.sh").write_text(
        "#!/bin/bash\nsleep 30 &\necho $! > child.pid\necho 'still counting' >&2\nwait\n"
    )
    (tmp_path / "slow.sh").chmod(0o755)
    src = source(tmp_path, ["./slow.sh"], timeout="500ms")
    with anyio.fail_after(5), pytest.raises(SignalError) as info:
        await src.observe({Cohort.CANARY: [WEB1]}, START, END)
    assert "did not finish within 0.5s" in info.value.message
    assert "still counting" in info.value.message
    child = int((tmp_path / "child.pid").read_text())
    with anyio.fail_after(2):
        while _alive(child):  # noqa: ASYNC110 - polling /proc: there is no event to await
            await anyio.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


async def test_cancelling_a_look_kills_the_command(tmp_path: Path) -> None:
    """When the engine's deadline cancels the look, the command does not outlive it."""
    (tmp_path / "slow.sh").write_text("#!/bin/bash\necho $$ > self.pid\nexec sleep 30\n")
    (tmp_path / "slow.sh").chmod(0o755)
    src = source(tmp_path, ["./slow.sh"], timeout="30s")
    with anyio.move_on_after(0.5):
        await src.observe({Cohort.CANARY: [WEB1]}, START, END)
    pid = int((tmp_path / "self.pid").read_text())
    assert not _alive(pid)


async def test_empty_cohort_is_missing_without_running_the_command(tmp_path: Path) -> None:
    """No hosts, no run: the cohort is missing."""
    src = source(tmp_path, ["./does-not-exist"])
    obs = await src.observe({Cohort.BASELINE: []}, START, END)
    assert not obs[Cohort.BASELINE].available


async def test_preflight_names_a_missing_or_non_executable_command(tmp_path: Path) -> None:
    """Relative paths resolve against the config folder; problems are PreflightErrors."""
    with pytest.raises(PreflightError, match="does not exist"):
        await source(tmp_path, ["./metric.py"]).preflight([WEB1])
    (tmp_path / "metric.py").write_text("print('{}')\n")
    with pytest.raises(PreflightError, match="not executable"):
        await source(tmp_path, ["./metric.py"]).preflight([WEB1])
    with pytest.raises(PreflightError, match="not on PATH"):
        await source(tmp_path, ["no-such-tool-xyz"]).preflight([WEB1])
    await source(tmp_path, [sys.executable, "metric.py"]).preflight([WEB1])


async def test_command_that_cannot_start_is_a_signal_error(tmp_path: Path) -> None:
    """A missing executable at observe time is a SignalError, not an OSError."""
    with pytest.raises(SignalError, match="cannot be started"):
        await source(tmp_path, ["./nope"]).observe({Cohort.CANARY: [WEB1]}, START, END)


# -- the examples of docs/adapters/command.md -------------------------------------------------


def _access_log(tmp_path: Path) -> tuple[Path, Path]:
    """The same checkout traffic as a plain log and a JSON-lines log."""
    rows = []
    t0 = START.timestamp()
    for i in range(50):
        ts = t0 + i * 0.1
        rows.append((ts, "web1", "/checkout", 500 if i % 5 == 0 else 200, 300.0))
        rows.append((ts, "web2", "/checkout", 200, 40.0))
        rows.append((ts, "web2", "/", 500, 1.0))  # not a checkout
    rows.append((END.timestamp() + 1, "web1", "/checkout", 500, 1.0))  # after the window
    plain = tmp_path / "access.log"
    plain.write_text("".join(f"{int(t)} {h} {p} {s} {lat}\n" for t, h, p, s, lat in rows))
    jsonl = tmp_path / "access.jsonl"
    jsonl.write_text(
        "".join(
            json.dumps(
                {
                    "ts": dt.datetime.fromtimestamp(t, dt.UTC).isoformat().replace("+00:00", "Z"),
                    "host": h,
                    "path": p,
                    "status": s,
                    "latency_ms": lat,
                }
            )
            + "\n"
            for t, h, p, s, lat in rows
        )
    )
    return plain, jsonl


async def test_bash_example_counts_checkout_failures_per_cohort(tmp_path: Path) -> None:
    """docs/adapters/examples/checkout-errors.sh splits canary and baseline."""
    plain, _ = _access_log(tmp_path)
    src = CommandSource(
        CommandSource.Settings(
            command=["examples/checkout-errors.sh"], env={"CHECKOUT_LOG": str(plain)}
        ),
        base_dir=EXAMPLES.parent,
    )
    await src.preflight([WEB1])
    obs = await src.observe({Cohort.CANARY: [WEB1], Cohort.BASELINE: [WEB2]}, START, END)
    assert (obs[Cohort.CANARY].requests, obs[Cohort.CANARY].errors) == (50, 10)
    assert (obs[Cohort.BASELINE].requests, obs[Cohort.BASELINE].errors) == (50, 0)


async def test_python_example_reports_latency_buckets(tmp_path: Path) -> None:
    """docs/adapters/examples/checkout_latency.py adds a latency histogram."""
    _, jsonl = _access_log(tmp_path)
    src = CommandSource(
        CommandSource.Settings(
            command=[sys.executable, str(EXAMPLES / "checkout_latency.py")],
            env={"CHECKOUT_LOG": str(jsonl)},
        ),
        base_dir=tmp_path,
    )
    obs = await src.observe({Cohort.CANARY: [WEB1], Cohort.BASELINE: [WEB2]}, START, END)
    canary, baseline = obs[Cohort.CANARY], obs[Cohort.BASELINE]
    assert (canary.requests, canary.errors) == (50, 10)
    assert canary.latency_buckets == (0, 0, 0, 0, 50, 0, 0)
    assert baseline.latency_buckets == (0, 50, 0, 0, 0, 0, 0)
    assert os.access(EXAMPLES / "checkout_latency.py", os.X_OK)


@pytest.mark.parametrize("fractional_log", [True, False])
async def test_docs_examples_count_each_request_once_over_consecutive_looks(
    tmp_path: Path, fractional_log: bool
) -> None:
    """Looks of about a second with fractional edges, as the bake asks them, partition time:
    the docs' bash and Python examples, run over a real log, count every request exactly once
    (whatever the log's or the variables' precision)."""
    t0 = START.timestamp()
    rows = [
        (t0 + i * 0.137, "web1" if i % 3 else "web2", 500 if i % 7 == 0 else 200)
        for i in range(400)
    ]
    plain = tmp_path / "access.log"
    plain.write_text(
        "".join(
            f"{(f'{t:.3f}' if fractional_log else int(t))} {h} /checkout {s} 12.0\n"
            for t, h, s in rows
        )
    )
    jsonl = tmp_path / "access.jsonl"
    jsonl.write_text(
        "".join(
            json.dumps(
                {
                    "ts": dt.datetime.fromtimestamp(t if fractional_log else int(t), dt.UTC)
                    .isoformat(timespec="milliseconds")
                    .replace("+00:00", "Z"),
                    "host": h,
                    "path": "/checkout",
                    "status": s,
                    "latency_ms": 12.0,
                }
            )
            + "\n"
            for t, h, s in rows
        )
    )
    bash = CommandSource(
        CommandSource.Settings(
            command=["examples/checkout-errors.sh"], env={"CHECKOUT_LOG": str(plain)}
        ),
        base_dir=EXAMPLES.parent,
    )
    python = CommandSource(
        CommandSource.Settings(
            command=[sys.executable, str(EXAMPLES / "checkout_latency.py")],
            env={"CHECKOUT_LOG": str(jsonl)},
        ),
        base_dir=tmp_path,
    )
    # 1 s looks shifted by 0.37 s, with the jitter of a real loop (0.9 .. 1.1 s)
    edges = [START - dt.timedelta(seconds=0.63)]
    while edges[-1] < START + dt.timedelta(seconds=60):
        edges.append(edges[-1] + dt.timedelta(seconds=0.9 + 0.2 * ((len(edges) * 7) % 10) / 10))
    cohorts = {Cohort.CANARY: [WEB1], Cohort.BASELINE: [WEB2]}
    for src in (bash, python):
        totals = {Cohort.CANARY: [0, 0], Cohort.BASELINE: [0, 0]}
        for a, b in itertools.pairwise(edges):
            obs = await src.observe(cohorts, a, b)
            for c, o in obs.items():
                totals[c][0] += o.requests
                totals[c][1] += o.errors
        want_canary = [
            sum(1 for _, h, _ in rows if h == "web1"),
            sum(1 for _, h, s in rows if h == "web1" and s >= 500),
        ]
        want_baseline = [
            sum(1 for _, h, _ in rows if h == "web2"),
            sum(1 for _, h, s in rows if h == "web2" and s >= 500),
        ]
        assert (want_canary, want_baseline) == (totals[Cohort.CANARY], totals[Cohort.BASELINE])


async def test_the_window_the_command_sees_is_whole_seconds_in_every_form(tmp_path: Path) -> None:
    """ISO, epoch variables and stdin floats all name [floor(start), floor(end))."""
    script(
        tmp_path,
        """\
        import json, os, sys
        doc = json.load(sys.stdin)
        print(json.dumps({"requests": 0, "errors": 0,
                          "detail": " ".join([doc["start"], doc["end"], str(doc["start_epoch"]),
                                              str(doc["end_epoch"]),
                                              os.environ["IMMUNITY_START_EPOCH"],
                                              os.environ["IMMUNITY_END_EPOCH"]])}))
        """,
    )
    src = source(tmp_path, ["./metric.py"])
    a = START + dt.timedelta(seconds=0.37)
    obs = await src.observe({Cohort.CANARY: [WEB1]}, a, a + dt.timedelta(seconds=1.2))
    s, e = int(START.timestamp()), int(START.timestamp()) + 1
    assert obs[Cohort.CANARY].detail == (
        f"2026-05-04T12:30:00.000Z 2026-05-04T12:30:01.000Z {float(s)} {float(e)} {s} {e}"
    )
    empty = await src.observe({Cohort.CANARY: [WEB1]}, a, a + dt.timedelta(seconds=0.5))
    assert (empty[Cohort.CANARY].requests, empty[Cohort.CANARY].available) == (0, True)


async def test_preflight_runs_the_command_once_and_says_what_it_sees(tmp_path: Path) -> None:
    """Preflight runs the command for every host as the baseline; a failure is exit 2."""
    script(tmp_path, 'print(\'{"requests": 5, "errors": 1}\')\n', name="ok.py")
    said = await source(tmp_path, ["./ok.py"], name="orders").preflight([WEB1, WEB2])
    assert (
        said
        == "orders: the command counts 5 request(s) (1 errors) on the 2 host(s) in the last 60 s"
    )
    script(tmp_path, "import sys; sys.exit(3)\n", name="bad.py")
    with pytest.raises(PreflightError) as err:
        await source(tmp_path, ["./bad.py"]).preflight([WEB1])
    assert "exited with status 3" in err.value.message
