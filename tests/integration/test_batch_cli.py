"""``pqkms batch``: a file through a durable job, interrupted with Ctrl-C and resumed.

Its own stack: the "pro" plan is held to 500 items/s (burst 500) so that the 2 000-item
run is surely still going when it is interrupted after its second chunk.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pqkms.batch_files import (
    BatchFileError,
    BatchOptions,
    BatchState,
    run_batch_file,
    state_path,
)
from pqkms.client import DEFAULT_MESSAGE_LIMIT, PqkmsClient, PqkmsError
from schemas.algorithms import Plan
from schemas.jobs import JobOperation
from tests.support.stack import LocalStack

pytestmark = [pytest.mark.integration, pytest.mark.long]

ITEMS = 2000
CHUNK = 50


@pytest.fixture(scope="module")
async def batch_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalStack]:
    local = LocalStack(Path(tmp_path_factory.mktemp("batch-cli")),
                       extra_env={"PQKMS_PRO_RATE_PER_SECOND": "500",
                                  "PQKMS_PRO_BURST": "500"})
    try:
        await local.start(workers=2)
        yield local
    finally:
        local.stop()


@pytest.fixture
async def api_key(batch_stack: LocalStack) -> str:
    key = await batch_stack.create_tenant(Plan.PRO)
    async with await PqkmsClient.connect(batch_stack.nats_url, key) as client:
        await client.generate_key("Kyber768")
    return key


def plaintext(n: int) -> bytes:
    return f"row {n}: \u00e9t\u00e9 {'x' * (n % 50)}".encode()


def batch(stack: LocalStack, api_key: str, *args: str,
          key_version: int = 1) -> subprocess.Popen[str]:
    env = {**os.environ, "PQKMS_API_KEY": api_key}
    return subprocess.Popen(
        [sys.executable, "-m", "pqkms", "batch", *args, "--key-version", str(key_version),
         "--nats-url", stack.nats_url, "--chunk-size", str(CHUNK)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen[str], timeout: float = 60, status: int = 0) -> str:
    _, stderr = process.communicate(timeout=timeout)
    assert process.returncode == status, stderr
    return stderr


def summary_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def write_lines(path: Path, items: list[dict[str, object]]) -> None:
    path.write_text("".join(json.dumps(item) + "\n" for item in items))


def read_lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_batch_encrypt_resumes_after_ctrl_c_then_decrypts(
        batch_stack: LocalStack, api_key: str, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    with source.open("w") as lines:
        for n in range(ITEMS):
            item = {"plaintext": base64.b64encode(plaintext(n)).decode(), "reference": f"r{n}"}
            lines.write(json.dumps(item) + "\n")
    sealed, state = tmp_path / "sealed.jsonl", state_path(tmp_path / "sealed.jsonl")

    first = batch(batch_stack, api_key, "encrypt", "--in", str(source), "--out", str(sealed))
    deadline = time.monotonic() + 30
    while True:
        assert first.poll() is None, first.communicate()[1]
        assert time.monotonic() < deadline, "no chunk written in 30 s"
        if state.exists() and json.loads(state.read_text())["chunks_written"] >= 2:
            break
        await asyncio.sleep(0.02)
    first.send_signal(signal.SIGINT)
    _, stderr = first.communicate(timeout=30)
    assert first.returncode == 130, stderr
    assert "run the same command again" in stderr
    recorded = json.loads(state.read_text())
    assert 2 <= recorded["chunks_written"] < ITEMS // CHUNK
    job_id = recorded["job_id"]
    with sealed.open("ab") as out:  # a torn line after the last complete chunk
        out.write(b'{"reference": "r9')

    second = batch(batch_stack, api_key, "encrypt", "--in", str(source), "--out", str(sealed),
                   "--keep-job")
    summary = finish(second)
    assert f"job {job_id}, resumed after {recorded['chunks_written']} chunks" in summary
    assert "items/s" in summary
    assert not state.exists()
    results = read_lines(sealed)
    assert [r["reference"] for r in results] == [f"r{n}" for n in range(ITEMS)]
    assert all("data" in r for r in results)
    async with await PqkmsClient.connect(batch_stack.nats_url, api_key) as client:
        status = await client.job_status(job_id)  # the resumed run reused the job...
    assert status["state"] == "completed" and status["total_chunks"] == ITEMS // CHUNK
    assert status["items_done"] == ITEMS  # ... and no chunk ran twice

    opened = tmp_path / "opened.jsonl"
    summary = summary_line(finish(batch(batch_stack, api_key, "decrypt", "--in", str(sealed),
                                        "--out", str(opened))))
    # Without --keep-job the finished job is deleted: no plaintexts stay in JetStream.
    decrypt_job = re.search(r"\(job ([0-9a-f]+)\)", summary)
    assert decrypt_job is not None, summary
    async with await PqkmsClient.connect(batch_stack.nats_url, api_key) as client:
        with pytest.raises(PqkmsError) as raised:
            await client.job_status(decrypt_job[1])
    assert raised.value.code == "ERR_NOT_FOUND_001"
    decrypted = read_lines(opened)
    assert [r["reference"] for r in decrypted] == [f"r{n}" for n in range(ITEMS)]
    assert [base64.b64decode(r["data"]["plaintext"]) for r in decrypted] == [  # type: ignore[index]
        plaintext(n) for n in range(ITEMS)]


async def test_raw_lines_and_per_item_errors(batch_stack: LocalStack, api_key: str,
                                             tmp_path: Path) -> None:
    source = tmp_path / "raw.txt"
    source.write_bytes(b"alpha\nbeta\n\ngamma\n")
    sealed = tmp_path / "raw.jsonl"
    finish(batch(batch_stack, api_key, "encrypt", "--raw-lines", "--in", str(source),
                 "--out", str(sealed)))
    ciphertexts = [r["data"]["ciphertext"] for r in read_lines(sealed)]  # type: ignore[index]
    assert len(ciphertexts) == 4
    raw = tmp_path / "ciphertexts.txt"
    raw.write_text("\n".join([*ciphertexts, "not-base64!"]) + "\n")
    opened = tmp_path / "raw-opened.jsonl"
    stderr = finish(batch(batch_stack, api_key, "decrypt", "--raw-lines", "--in", str(raw),
                          "--out", str(opened)), status=3)  # one item failed
    assert ": 4 ok, 1 failed;" in summary_line(stderr)
    results = read_lines(opened)
    assert [base64.b64decode(r["data"]["plaintext"]) for r in results[:4]] == [  # type: ignore[index]
        b"alpha", b"beta", b"", b"gamma"]
    assert results[4]["error"]["code"] == "ERR_INVALID_001"  # type: ignore[index]


async def test_a_wrong_api_key_is_one_line_and_exit_1(batch_stack: LocalStack,
                                                      tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_text("hello\n")
    process = batch(batch_stack, "qph_wrong", "encrypt", "--raw-lines", "--in", str(source),
                    "--out", str(tmp_path / "out.jsonl"))
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1
    assert stderr.startswith("pqkms batch: ERR_AUTH") and "Traceback" not in stderr, stderr


async def test_an_empty_input_submits_no_job(batch_stack: LocalStack, api_key: str,
                                             tmp_path: Path) -> None:
    source = tmp_path / "empty.jsonl"
    source.write_bytes(b"")
    out = tmp_path / "empty-out.jsonl"
    stderr = finish(batch(batch_stack, api_key, "encrypt", "--in", str(source),
                          "--out", str(out)))
    assert stderr.strip().splitlines()[-1] == (
        f"encrypt: the input holds no items; no job submitted, {out} is empty")
    assert out.read_bytes() == b""
    assert out.stat().st_mode & 0o077 == 0  # (pqkms's umask: results are the owner's)


async def test_an_item_too_large_for_one_message_is_refused_before_submitting(
        batch_stack: LocalStack, api_key: str, tmp_path: Path) -> None:
    source, out = tmp_path / "large.jsonl", tmp_path / "large-out.jsonl"
    one_mib = 1024 * 1024
    write_lines(source, [{"plaintext": b64(b"a")}, {"plaintext": b64(b"b" * 1_100_000)},
                         {"plaintext": b64(b"c")}])
    process = batch(batch_stack, api_key, "encrypt", "--in", str(source), "--out", str(out))
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1, stderr
    assert stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    assert stderr.startswith("pqkms batch: line 2: the item is too large for one message")
    assert f"{DEFAULT_MESSAGE_LIMIT:,}-byte message" in stderr
    assert not out.exists() and not state_path(out).exists()

    # Corrected (at the per-item limit), the same command runs.
    write_lines(source, [{"plaintext": b64(b"a")}, {"plaintext": b64(b"b" * one_mib)},
                         {"plaintext": b64(b"c")}])
    finish(batch(batch_stack, api_key, "encrypt", "--in", str(source), "--out", str(out)))
    assert all("data" in result for result in read_lines(out))


async def test_failed_items_make_exit_status_3(batch_stack: LocalStack, api_key: str,
                                               tmp_path: Path) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_lines(source, [{"plaintext": b64(b"%d" % n)} for n in range(2 * CHUNK)])
    stderr = finish(batch(batch_stack, api_key, "encrypt", "--in", str(source),
                          "--out", str(out), key_version=5), status=3)
    assert f"{2 * CHUNK} items in 2 chunks" in summary_line(stderr)
    assert f": 0 ok, {2 * CHUNK} failed;" in summary_line(stderr)
    assert all("error" in result for result in read_lines(out))
    assert not state_path(out).exists()  # complete: nothing to resume


async def test_signatures_that_do_not_verify_make_exit_status_3(
        batch_stack: LocalStack, api_key: str, tmp_path: Path) -> None:
    messages = [b"first", b"second", b"third"]
    async with await PqkmsClient.connect(batch_stack.nats_url, api_key) as client:
        await client.generate_key("Dilithium3")
        signed = [await client.sign(message, 1) for message in messages]
    items: list[dict[str, object]] = [
        {"message": b64(message), "signature": result["signature"],
         "algorithm": result["algorithm"], "reference": f"r{n}"}
        for n, (message, result) in enumerate(zip(messages, signed, strict=True))]
    items[1]["message"] = b64(b"tampered")
    items.append({"message": "not base64!", "signature": signed[0]["signature"],
                  "algorithm": signed[0]["algorithm"]})
    source, out = tmp_path / "verify.jsonl", tmp_path / "verified.jsonl"
    write_lines(source, items)
    stderr = finish(batch(batch_stack, api_key, "verify", "--in", str(source),
                          "--out", str(out)), status=3)
    assert ": 2 verified, 1 did not verify, 1 failed;" in summary_line(stderr)
    assert [r["data"]["valid"] for r in read_lines(out)[:3]] == [  # type: ignore[index]
        True, False, True]

    write_lines(source, [items[0], items[2]])
    stderr = finish(batch(batch_stack, api_key, "verify", "--in", str(source),
                          "--out", str(out)))
    assert ": 2 verified, 0 did not verify, 0 failed;" in summary_line(stderr)


class _StopAfterFirstChunk(Exception):
    pass


def _stop_after_first_chunk(state: BatchState) -> None:
    raise _StopAfterFirstChunk


@pytest.mark.parametrize("state_format", ["current", "before counts and limit"])
async def test_a_resume_counts_every_run_and_cuts_the_same_chunks(
        batch_stack: LocalStack, api_key: str, tmp_path: Path, state_format: str) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    items: list[dict[str, object]] = [{"plaintext": b64(b"%d" % n), "reference": f"r{n}"}
                                      for n in range(3 * CHUNK)]
    items[10]["plaintext"] = items[120]["plaintext"] = "not base64!"  # one failure per run
    write_lines(source, items)
    options = BatchOptions(JobOperation.KEM_ENCRYPT, source, out, key_version=1,
                           chunk_size=CHUNK, keep_job=True)
    async with await PqkmsClient.connect(batch_stack.nats_url, api_key) as client:
        with pytest.raises(_StopAfterFirstChunk):
            await run_batch_file(client, options, progress_stream=io.StringIO(),
                                 on_chunk=_stop_after_first_chunk)
    recorded = json.loads(state_path(out).read_text())
    assert recorded["message_limit"] == DEFAULT_MESSAGE_LIMIT
    assert (recorded["items_succeeded"], recorded["items_failed"]) == (CHUNK - 1, 1)
    if state_format != "current":  # as an earlier pqkms wrote it
        for name in ("message_limit", "items_succeeded", "items_failed",
                     "items_not_verified"):
            del recorded[name]
        state_path(out).write_text(json.dumps(recorded))

    # A client cutting for a smaller limit would cut other chunks: the record's is used.
    async with await PqkmsClient.connect(batch_stack.nats_url, api_key,
                                         message_limit=60_000) as client:
        summary = await run_batch_file(client, options, progress_stream=io.StringIO())
        status = await client.job_status(summary.job_id)
    assert summary.resumed and summary.chunks_skipped == 1
    assert (summary.succeeded, summary.failed, summary.not_verified) == (3 * CHUNK - 2, 2, 0)
    assert status["total_chunks"] == 3 and status["items_done"] == 3 * CHUNK
    assert [r["reference"] for r in read_lines(out)] == [f"r{n}" for n in range(3 * CHUNK)]


async def test_a_job_deleted_under_a_running_batch_stops_it_with_one_line(
        batch_stack: LocalStack, api_key: str, tmp_path: Path) -> None:
    # Another run with the same --job-id finished first and deleted the job: this run
    # would otherwise wait for chunks that are gone, for good.
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_lines(source, [{"plaintext": b64(b"%d" % n)} for n in range(40 * CHUNK)])
    options = BatchOptions(JobOperation.KEM_ENCRYPT, source, out, key_version=1,
                           chunk_size=CHUNK, job_id="shared-id", window=2)
    async with await PqkmsClient.connect(batch_stack.nats_url, api_key) as client:
        running = asyncio.create_task(run_batch_file(client, options,
                                                     progress_stream=io.StringIO()))
        state = state_path(out)
        for _ in range(600):
            if state.exists() and json.loads(state.read_text())["chunks_written"] >= 1:
                break
            assert not running.done()
            await asyncio.sleep(0.02)
        await client.delete_job("shared-id")
        with pytest.raises(BatchFileError, match="job") as raised:
            await asyncio.wait_for(running, 60)
    assert str(state) in str(raised.value)
