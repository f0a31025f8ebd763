"""Progress bars: drawn on a terminal, never into logs or captured output, off with logging.progress_bar=false."""

from __future__ import annotations

import io

import pytest

from diffaug import progress as bars


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def bars_back_on():
    yield
    bars.set_progress(True)


def _drawn(monkeypatch, stream: io.StringIO, **kwargs) -> str:
    """What a 5-batch bar writes to ``stream`` standing in for stderr (patched here, in the test's own phase:
    pytest's capture puts its own stderr back between setup and call)."""
    monkeypatch.setattr("sys.stderr", stream)
    assert list(bars.progress(range(5), desc="bits/dim", unit="batch", **kwargs)) == [0, 1, 2, 3, 4]
    monkeypatch.undo()
    return stream.getvalue()


def test_bar_on_a_terminal_names_the_step_and_clears_itself(monkeypatch):
    drawn = _drawn(monkeypatch, _Terminal())
    assert "bits/dim:   0%" in drawn and "0/5" in drawn
    assert drawn.endswith("\r")  # cleared: nothing left behind the step's own log lines


def test_no_bar_with_progress_bar_false(monkeypatch):
    bars.set_progress(False)
    assert _drawn(monkeypatch, _Terminal()) == ""


def test_no_bar_when_the_call_site_turns_it_off(monkeypatch):
    assert _drawn(monkeypatch, _Terminal(), enabled=False) == ""


def test_no_bar_when_stderr_is_not_a_terminal(monkeypatch):
    assert _drawn(monkeypatch, io.StringIO()) == ""  # a log file or captured output
