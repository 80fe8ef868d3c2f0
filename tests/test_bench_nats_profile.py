"""bench.nats_profile: perf's samples of nats-server folded and summed by cost.

The first tests read a fixed ``perf script`` text; the last records a real nats-server
with perf (skipped where perf is missing or not allowed), so that a nats-server whose
function names no longer match the categories is noticed.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import nats
import pytest

from bench.nats_profile import NATS_CATEGORIES, categorize_stacks
from bench.perf_samples import fold_perf_script, perf_record_arguments, perf_script_arguments
from bench.profile_worker import main
from bench.stacks import read_collapsed, summarize_stacks, write_collapsed
from pqkms.nats_embedded import start_nats_server
from tests.support.perf import perf_can_record

_SERVER = "github.com/nats-io/nats-server/v2/server."
_PERF_SCRIPT = f"""\
nats-server  5358/5361
\tffffffff81ba822d copy_folio_from_iter_atomic
\tffffffff8223df91 do_syscall_64
\t          4d46b1 {_SERVER}(*msgBlock).writeAt
\t          4c5d0b {_SERVER}(*fileStore).StoreMsg
\t          723939 {_SERVER}(*stream).internalLoop
\t           92c41 runtime.goexit.abi0

nats-server  5358/5374
\t          4d46b1 {_SERVER}(*msgBlock).writeAt+0x51
\t          4c5d0b {_SERVER}(*fileStore).StoreMsg
\t          8a0001 {_SERVER}(*client).processInboundJetStreamMsg
\t          8a0002 {_SERVER}(*client).readLoop
\t           92c41 runtime.goexit.abi0

nats-server  5358/5362
\t          8a0003 runtime.memmove
\t          8a0002 {_SERVER}(*client).readLoop
\t           92c41 runtime.goexit.abi0

nats-server  5358/5362
\t          8a0003 runtime.memmove
\t          8a0002 {_SERVER}(*client).readLoop
\t           92c41 runtime.goexit.abi0

nats-server  5358/5363
\t          8a0004 runtime.findRunnable
\t          8a0005 runtime.schedule
"""


def test_samples_fold_into_stacks_root_first() -> None:
    stacks = fold_perf_script(_PERF_SCRIPT)
    assert stacks == {
        "runtime.goexit.abi0;(*stream).internalLoop;(*fileStore).StoreMsg;"
        "(*msgBlock).writeAt;do_syscall_64 [k];copy_folio_from_iter_atomic [k]": 1,
        "runtime.goexit.abi0;(*client).readLoop;(*client).processInboundJetStreamMsg;"
        "(*fileStore).StoreMsg;(*msgBlock).writeAt": 1,
        "runtime.goexit.abi0;(*client).readLoop;runtime.memmove": 2,
        # (the last sample has no blank line after it)
        "runtime.schedule;runtime.findRunnable": 1,
    }


def test_a_store_write_counts_as_the_store_wherever_it_is_called_from() -> None:
    total, counts, kernel = categorize_stacks(fold_perf_script(_PERF_SCRIPT))
    assert total == 5
    assert counts == {
        "JetStream store: writing messages (page cache)": 2,
        "reading and routing client messages (socket reads, parse, match)": 2,
        "Go runtime: scheduler and timers": 1,
    }
    assert kernel == 1  # the sample whose leaf is the kernel's


def test_folded_stacks_round_trip_through_the_collapsed_format(tmp_path: Path) -> None:
    stacks = fold_perf_script(_PERF_SCRIPT)
    write_collapsed(tmp_path / "stacks.txt", stacks)
    assert read_collapsed(tmp_path / "stacks.txt") == stacks
    summary = summarize_stacks(stacks, top=3)
    assert summary.startswith("5 samples")
    assert "80.0%  runtime.goexit.abi0" in summary  # 4 of the 5 samples
    assert "40.0%  runtime.memmove" in summary.split("-- self --")[1]


def test_perf_records_call_stacks_of_the_process_for_the_time_asked() -> None:
    assert perf_record_arguments(42, 12.5, "/tmp/out.perf") == [
        "record", "-F", "999", "-g", "-p", "42", "-o", "/tmp/out.perf", "--", "sleep", "12.5"]
    assert perf_script_arguments("/tmp/out.perf")[:3] == ["script", "-i", "/tmp/out.perf"]


@pytest.mark.parametrize("option", ["--gil", "--blocking", "--native"])
def test_py_spy_options_are_refused_with_nats(option: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--nats", option])
    assert exit_info.value.code == 2
    assert "perf records nats-server" in capsys.readouterr().err


@pytest.mark.skipif(not perf_can_record(), reason="perf is missing or may not record here")
def test_a_real_nats_server_under_load_lands_in_the_categories(tmp_path: Path) -> None:
    server = start_nats_server(tmp_path / "nats")
    recording = tmp_path / "nats.perf"
    try:
        perf = subprocess.Popen(  # (perf stops on its own after 2 s)
            ["perf", *perf_record_arguments(server.process.pid, 2, str(recording))],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        asyncio.run(_publish_and_receive(server.url, seconds=1.5))
        assert perf.wait(timeout=30) == 0
    finally:
        server.stop()
    script = subprocess.run(["perf", *perf_script_arguments(str(recording))],
                            capture_output=True, check=True)
    total, counts, _ = categorize_stacks(fold_perf_script(script.stdout.decode()),
                                         NATS_CATEGORIES)
    assert total > 0
    # Publishing and delivering is what this server did: its own categories hold most of it.
    assert counts.get("reading and routing client messages (socket reads, parse, match)", 0)
    assert counts.get("other", 0) < total / 2


async def _publish_and_receive(url: str, seconds: float) -> None:
    client = await nats.connect(url)
    try:
        await client.subscribe("load.>", cb=_ignore)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while loop.time() < deadline:
            for _ in range(500):
                await client.publish("load.x", b"x" * 1024)
            await client.flush()
    finally:
        await client.close()


async def _ignore(_msg: object) -> None:
    return None
