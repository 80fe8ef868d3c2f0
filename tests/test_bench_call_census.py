"""The call census counts exactly what runs between its two signals (no timing asserted)."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest

from bench.call_census import Census, call_area, census_table, main, short_location
from bench.call_counter import CallCounter, install_signal_window


def _counted_function() -> int:
    return len("abc")


def _calls_of(snapshot: dict[str, list[list[object]]], name: str) -> int:
    return sum(int(str(row[3])) for row in snapshot["calls"] if row[2] == name)


def test_counter_counts_only_between_start_and_stop() -> None:
    counter = CallCounter()
    _counted_function()
    counter.start()
    for _ in range(7):
        _counted_function()
    counter.stop()
    _counted_function()

    snapshot = counter.snapshot()
    assert _calls_of(snapshot, "_counted_function") == 7
    assert ["builtins.len", 7] in snapshot["c_calls"]


def test_signals_open_and_close_the_window_and_write_the_counts(tmp_path: Path) -> None:
    out = tmp_path / "census.json"
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR1, signal.SIGUSR2)}
    try:
        install_signal_window(out)
        os.kill(os.getpid(), signal.SIGUSR1)
        for _ in range(5):
            _counted_function()
        os.kill(os.getpid(), signal.SIGUSR2)
        _counted_function()
    finally:
        sys.setprofile(None)  # (in case the second signal never came)
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    assert _calls_of(json.loads(out.read_text()), "_counted_function") == 5
    assert not (tmp_path / "census.json.partial").exists()


@pytest.mark.parametrize(("location", "area"), [
    ("/work/main/worker/audit/trail.py", "worker/audit"),
    ("/work/main/worker/main.py", "worker"),
    ("/elsewhere/pqkms-base/schemas/fields.py", "schemas"),
    ("/v/lib/python3.11/site-packages/nats/aio/client.py", "nats"),
    ("/v/lib/python3.11/site-packages/typing_extensions.py", "typing_extensions"),
    ("/usr/lib/python3.11/asyncio/queues.py", "stdlib asyncio"),
    ("/usr/lib/python3.11/enum.py", "stdlib enum"),
    ("<frozen abc>", "<frozen abc>"),
    ("orjson.dumps", "C orjson"),
    ("builtins.list.append", "C builtins"),
])
def test_areas_name_the_package_or_module(location: str, area: str) -> None:
    assert call_area(location) == area


@pytest.mark.parametrize(("location", "short"), [
    ("/work/main/worker/audit/trail.py", "worker/audit/trail.py"),
    ("/work/pqkms-base/worker/audit/trail.py", "worker/audit/trail.py"),
    ("/v/lib/python3.11/site-packages/nats/aio/client.py", "nats/aio/client.py"),
    ("/usr/lib/python3.11/asyncio/queues.py", "asyncio/queues.py"),
    ("<string>", "<string>"),
])
def test_locations_read_from_their_package(location: str, short: str) -> None:
    assert short_location(location) == short


def test_two_sides_are_compared_per_request_largest_change_first() -> None:
    this = Census.from_snapshot({"calls": [["/p/worker/a.py", 1, "f", 300],
                                           ["/p/worker/b.py", 5, "g", 100]],
                                 "c_calls": [["orjson.dumps", 100]]}, requests=100)
    base = Census.from_snapshot({"calls": [["/p/worker/a.py", 1, "f", 100],
                                           ["/p/worker/b.py", 5, "g", 200]],
                                 "c_calls": [["orjson.dumps", 200]]}, requests=200)

    assert this.areas == {"worker": 400, "C orjson": 100}
    assert set(this.calls) == {"f (worker/a.py)", "g (worker/b.py)"}
    rows = {"f (worker/a.py)": {"this": 300, "base": 100},
            "g (worker/b.py)": {"this": 100, "base": 200}}
    lines = census_table("Python functions", {"this": this, "base": base}, rows, top=5)
    # f: 3.00 against 0.50 per request; g: 1.00 against 1.00.
    assert lines[2].split() == ["3.00", "0.50", "+2.50", "f", "(worker/a.py)"]
    assert lines[3].split() == ["1.00", "1.00", "+0.00", "g", "(worker/b.py)"]


@pytest.mark.integration
def test_a_real_worker_is_counted_per_request(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "census.json"

    main(["--operation", "encrypt", "--requests", "30", "--out", str(out)])

    counted = json.loads(out.read_text())["this"]
    assert counted["requests"] == 30
    census = Census(**counted)
    areas = census.areas
    # Every request ran the worker's handlers and nats-py's client, and sealed.
    assert census.per_request(areas["worker/handlers"]) >= 1
    assert census.per_request(areas["nats"]) >= 1
    assert any("seal" in where for where in census.calls)
    assert "30 counted" in capsys.readouterr().out
