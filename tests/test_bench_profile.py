"""bench.profile_worker: how py-spy's collapsed stacks are summed up (no profiling here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.profile_worker import (
    BRIDGE_CATEGORIES,
    Sampling,
    categorize_collapsed,
    main,
    py_spy_record_arguments,
)

_STACKS = """\
run (api_bridge/main.py:1);DirectPost.__call__ (api_bridge/direct_post.py:2);\
Client.publish (nats/aio/client.py:3) 5
run (api_bridge/main.py:1);Client._read_loop (nats/aio/client.py:6);\
ReplyInbox._on_reply (api_bridge/reply_inbox.py:7) 3
run (api_bridge/main.py:1);RequestResponseCycle.send (uvicorn/protocols/http/x.py:4);\
CoalescingTransport.flush (api_bridge/coalesced_writes.py:5) 2
somewhere (elsewhere.py:1) 1
"""


@pytest.fixture
def stacks(tmp_path: Path) -> Path:
    path = tmp_path / "stacks.txt"
    path.write_text(_STACKS)
    return path


def test_the_innermost_matching_frame_decides(stacks: Path) -> None:
    total, counts = categorize_collapsed(stacks, BRIDGE_CATEGORIES, innermost=True)
    assert total == 11
    assert counts == {"nats-py client (request, parse, publish)": 5,
                      "bridge's own code": 3,
                      "socket writes (coalesced_writes.py)": 2,
                      "other": 1}


def test_by_default_the_first_category_anywhere_in_the_stack_decides(stacks: Path) -> None:
    _, counts = categorize_collapsed(stacks, BRIDGE_CATEGORIES)
    # nats-py comes before the bridge's own code in the list: the reply callback that
    # nats-py's read loop calls counts as nats-py's.
    assert counts == {"nats-py client (request, parse, publish)": 8,
                      "socket writes (coalesced_writes.py)": 2,
                      "other": 1}


def test_the_bridge_takes_single_requests_only(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--bridge", "--batch", "10"])
    assert exit_info.value.code == 2
    assert "--bridge sends single requests" in capsys.readouterr().err


@pytest.mark.parametrize("arguments", [["--bridge", "--job", "1000"],
                                       ["--batch", "100", "--job", "1000"]])
def test_jobs_are_profiled_alone(arguments: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(arguments)
    assert exit_info.value.code == 2


def test_py_spy_reads_a_running_process_unless_told_to_pause_it(tmp_path: Path) -> None:
    out = tmp_path / "stacks.txt"
    running = py_spy_record_arguments(42, 12.5, out, Sampling(gil=True))
    assert running == ["record", "--pid", "42", "--duration", "12", "--rate", "250",
                       "--format", "raw", "--output", str(out), "--nonblocking", "--gil"]
    paused = py_spy_record_arguments(42, 12.5, out, Sampling(blocking=True))
    assert "--nonblocking" not in paused
    assert "--native" not in paused


def test_native_frames_pause_the_process(tmp_path: Path) -> None:
    # py-spy refuses --native together with --nonblocking.
    arguments = py_spy_record_arguments(7, 3, tmp_path / "out", Sampling(native=True))
    assert "--native" in arguments
    assert "--nonblocking" not in arguments
