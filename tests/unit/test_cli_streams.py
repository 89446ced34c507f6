"""Standard streams that outlive their reader (immunity.cli.streams), on real pipes."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

from immunity.cli.streams import ReaderProof


def test_a_write_after_the_pipes_reader_closed_is_dropped_and_later_output_goes_nowhere() -> None:
    r, w = os.pipe()
    stream = ReaderProof(io.TextIOWrapper(os.fdopen(w, "wb"), write_through=True))
    stream.write("first\n")
    stream.flush()
    assert os.read(r, 100) == b"first\n"
    os.close(r)  # the reader exits, as `head -1` does
    assert stream.write("second\n") == len("second\n")
    stream.flush()  # BrokenPipeError before
    assert stream.gone
    stream.write("third\n")
    stream.flush()
    # the descriptor now points at /dev/null, so even an unwrapped write succeeds
    os.write(stream.fileno(), b"fourth\n")


def test_another_output_error_drops_the_text_but_keeps_the_stream() -> None:
    class Full(io.StringIO):
        def write(self, s: str) -> int:
            raise OSError(28, "No space left on device")

    stream = ReaderProof(Full())
    assert stream.write("x") == 1
    assert not stream.gone


def test_other_attributes_are_the_wrapped_streams() -> None:
    inner = io.StringIO()
    stream = ReaderProof(inner)
    stream.write("abc")
    assert stream.getvalue() == "abc" and stream.isatty() is False


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_the_cli_exits_with_its_own_code_when_its_reader_is_gone(stream: str) -> None:
    """`immunity --help | true`-like: a real process whose pipe's reader closed before it
    wrote exits 0, with no BrokenPipeError traceback (Python's own flush at exit included)."""
    code = (
        "import sys, os; from immunity.cli.streams import protect_standard_streams;"
        "protect_standard_streams(); s = getattr(sys, sys.argv[1]);"
        "[s.write('line %d\\n' % i) for i in range(100000)]; s.flush()"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", code, stream],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    pipe = p.stdout if stream == "stdout" else p.stderr
    other = p.stderr if stream == "stdout" else p.stdout
    assert pipe is not None and other is not None
    pipe.read(10)
    pipe.close()
    rest = other.read()
    assert p.wait(timeout=60) == 0, rest
