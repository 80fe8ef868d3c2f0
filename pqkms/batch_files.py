"""``pqkms batch``: run a file of items through a durable job, streaming, resumable.

The input is read twice, a chunk at a time (constant memory): once to count items and
chunks (a job's chunk count is fixed when it is submitted), then to submit each chunk
and write its results, in input order, as JSON Lines.

After every chunk written to the output, a small state file next to it
(``<out>.pqkms-state.json``) records the job id, the input's path, size and mtime, the
options that decide how items are cut into chunks (the message limit cut for included),
how many chunks (and bytes) of the output are complete and how many of their items
failed. Run again with the same arguments after Ctrl-C or a crash: the
output is truncated to the last complete chunk, the same job id is used, chunks already
written are skipped, the rest are submitted again (de-duplicated by the job, so a chunk
that already ran is not run twice) and their results fetched. When the output is
complete the job is deleted (its results, decrypted plaintexts included, would
otherwise stay in JetStream until they expire; ``keep_job`` keeps them), then the state
file is removed.

Every item is checked before anything is submitted: a line that is not an item, or an
item too large for one message even alone, is a :class:`BatchFileError` naming the line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import orjson
from nats.errors import Error as NatsError

from pqkms.client import (
    DEFAULT_MESSAGE_LIMIT,
    ItemTooLargeError,
    PqkmsClient,
    PqkmsError,
    split_items,
)
from schemas.batch import DEFAULT_MAX_BATCH_ITEMS
from schemas.errors import ErrorCode
from schemas.fields import b64encode
from schemas.jobs import JobOperation, chunk_not_done_message

__all__ = [
    "ITEMS_FAILED_EXIT_STATUS",
    "OPERATIONS",
    "BatchFileError",
    "BatchOptions",
    "BatchSummary",
    "BatchState",
    "ItemCounts",
    "Progress",
    "connect",
    "check_options",
    "count_chunks",
    "iter_chunks",
    "iter_items",
    "run_batch_file",
    "state_path",
]

#: ``pqkms batch``'s exit status when the output is complete but some items failed (or,
#: for verify, did not verify).
ITEMS_FAILED_EXIT_STATUS = 3

STATE_SUFFIX = ".pqkms-state.json"
STATE_FORMAT = 1

#: ``pqkms batch`` command → job operation.
OPERATIONS: dict[str, JobOperation] = {
    "encrypt": JobOperation.KEM_ENCRYPT,
    "decrypt": JobOperation.KEM_DECRYPT,
    "sign": JobOperation.SIGNATURE_SIGN,
    "verify": JobOperation.SIGNATURE_VERIFY,
}

# What a raw line (``--raw-lines``) becomes.
_RAW_FIELD = {
    JobOperation.KEM_ENCRYPT: "plaintext",
    JobOperation.SIGNATURE_SIGN: "message",
    JobOperation.KEM_DECRYPT: "ciphertext",
}


class BatchFileError(Exception):
    """A problem with the files or arguments, reported as one line."""


@dataclass(frozen=True)
class BatchOptions:
    """One ``pqkms batch`` run."""

    operation: JobOperation
    input_path: Path
    output_path: Path
    key_version: int
    algorithm: str | None = None
    chunk_size: int = 500
    raw_lines: bool = False
    job_id: str | None = None
    #: Chunks submitted ahead of the one being written.
    window: int = 8
    #: The largest message chunks are cut for; the server's ``max_payload`` when lower.
    message_limit: int = DEFAULT_MESSAGE_LIMIT
    poll_seconds: float = 0.1
    #: Leave the job (and its results) in JetStream once the output is complete.
    keep_job: bool = False


@dataclass
class ItemCounts:
    """Outcomes of results: ``succeeded`` (data, whether or not a signature verified),
    ``failed`` (an error), ``not_verified`` (verify's ``valid: false``, among succeeded)."""

    succeeded: int = 0
    failed: int = 0
    not_verified: int = 0

    def add(self, results: list[dict[str, Any]]) -> None:
        """Count each result."""
        for result in results:
            if "error" in result:
                self.failed += 1
                continue
            self.succeeded += 1
            data = result.get("data")
            if isinstance(data, dict) and data.get("valid") is False:
                self.not_verified += 1


@dataclass
class BatchState:
    """The resume record kept in ``<out>.pqkms-state.json``."""

    job_id: str
    operation: str
    input_path: str
    input_size: int
    input_mtime_ns: int
    chunk_size: int
    raw_lines: bool
    key_version: int
    algorithm: str | None
    total_chunks: int
    total_items: int
    chunks_written: int = 0
    items_written: int = 0
    output_bytes: int = 0
    format: int = STATE_FORMAT
    # Added within format 1, absent from the state files of earlier pqkms versions: the
    # message limit chunks were cut for (theirs cut for the default) and the outcomes of
    # the items written (None: counted again from the output).
    message_limit: int = DEFAULT_MESSAGE_LIMIT
    items_succeeded: int | None = None
    items_failed: int | None = None
    items_not_verified: int | None = None

    @property
    def counts(self) -> ItemCounts | None:
        """The outcomes of the items written, if recorded."""
        if (self.items_succeeded is None or self.items_failed is None
                or self.items_not_verified is None):
            return None
        return ItemCounts(self.items_succeeded, self.items_failed, self.items_not_verified)

    def record(self, counts: ItemCounts) -> None:
        """Keep ``counts`` as the outcomes of the items written."""
        self.items_succeeded = counts.succeeded
        self.items_failed = counts.failed
        self.items_not_verified = counts.not_verified

    def same_run(self, other: BatchState) -> list[str]:
        """The settings in which ``other`` (this invocation) differs from the record."""
        names = ("operation", "input_path", "input_size", "input_mtime_ns", "chunk_size",
                 "raw_lines", "key_version", "algorithm", "format")
        return [name for name in names if getattr(self, name) != getattr(other, name)]


@dataclass
class BatchSummary:
    """What a run did: counts of the whole output, this run's and earlier runs' alike
    (this invocation only for ``items_this_run`` and ``seconds``)."""

    job_id: str
    total_items: int
    total_chunks: int
    items_this_run: int
    chunks_skipped: int
    succeeded: int
    failed: int
    seconds: float
    resumed: bool
    #: Verify items answered ``valid: false`` (counted in ``succeeded`` too).
    not_verified: int = 0
    #: Why the job is still in JetStream (``None``: deleted once the output was complete).
    job_kept: str | None = None

    @property
    def all_ok(self) -> bool:
        """No item failed and every signature verified."""
        return self.failed == 0 and self.not_verified == 0

    @property
    def items_per_second(self) -> float:
        """Throughput of this invocation."""
        return self.items_this_run / self.seconds if self.seconds > 0 else 0.0


def state_path(output_path: Path) -> Path:
    """Where the resume state of ``output_path`` is kept."""
    return output_path.with_name(output_path.name + STATE_SUFFIX)


# -- reading -------------------------------------------------------------------------------


def _item_from_line(operation: JobOperation, line: bytes, number: int,
                    raw_lines: bool) -> dict[str, Any]:
    if raw_lines:
        value = line.rstrip(b"\r\n")
        name = _RAW_FIELD[operation]
        if operation is JobOperation.KEM_DECRYPT:
            return {name: value.decode("ascii", errors="replace").strip()}
        return {name: b64encode(value)}
    try:
        item = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise BatchFileError(f"line {number}: not JSON: {exc}") from None
    if not isinstance(item, dict):
        raise BatchFileError(f"line {number}: not a JSON object")
    if operation is JobOperation.KEM_DECRYPT and ("data" in item or "error" in item):
        return _decrypt_item_from_result(item)
    return item


def _decrypt_item_from_result(result: dict[str, Any]) -> dict[str, Any]:
    """A line of ``pqkms batch encrypt`` output as a decrypt item (same reference).

    A failed encryption's line becomes an item without a ciphertext, so it fails again
    as its own item and the output stays aligned with the input.
    """
    item: dict[str, Any] = {}
    data = result.get("data")
    if isinstance(data, dict):
        item = {name: data[name] for name in ("ciphertext", "key_version", "algorithm")
                if name in data}
    if "reference" in result:
        item["reference"] = result["reference"]
    return item


def check_options(options: BatchOptions) -> None:
    """Fail early on arguments that cannot work (before connecting anywhere)."""
    if not options.input_path.is_file():
        raise BatchFileError(f"no such input file: {options.input_path}")
    if options.raw_lines and options.operation not in _RAW_FIELD:
        raise BatchFileError(f"--raw-lines does not apply to {options.operation.value}: "
                             "each item needs a message and a signature (use JSON Lines)")
    if not 1 <= options.chunk_size <= DEFAULT_MAX_BATCH_ITEMS:
        raise BatchFileError(f"the chunk size must be 1-{DEFAULT_MAX_BATCH_ITEMS}")
    if options.output_path.resolve() == options.input_path.resolve():
        raise BatchFileError("--out must not be the input file")


def iter_items(path: Path, operation: JobOperation,
               raw_lines: bool = False) -> Iterator[dict[str, Any]]:
    """Every item of the input file, one line at a time (blank lines are skipped in JSON
    Lines; with ``raw_lines`` every line is an item, an empty one included)."""
    for _, item in _numbered_items(path, operation, raw_lines):
        yield item


def _numbered_items(path: Path, operation: JobOperation,
                    raw_lines: bool) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, item)`` of every item of the input file."""
    if raw_lines and operation not in _RAW_FIELD:
        raise BatchFileError(f"--raw-lines does not apply to {operation.value}: each item "
                             "needs a message and a signature (use JSON Lines)")
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            if not raw_lines and not line.strip():
                continue
            yield number, _item_from_line(operation, line, number, raw_lines)


def iter_chunks(path: Path, operation: JobOperation, chunk_size: int, *, raw_lines: bool = False,
                message_limit: int = DEFAULT_MESSAGE_LIMIT) -> Iterator[list[dict[str, Any]]]:
    """The input's job chunks: groups of ``chunk_size`` items, each cut further by
    :func:`pqkms.client.split_items` when it would not fit in a message of
    ``message_limit`` bytes. The same file and options always give the same chunks.

    An item too large for one message even alone is a :class:`BatchFileError` naming
    its line and the limit."""
    size = min(chunk_size, DEFAULT_MAX_BATCH_ITEMS)
    group: list[dict[str, Any]] = []
    lines: list[int] = []
    for number, item in _numbered_items(path, operation, raw_lines):
        group.append(item)
        lines.append(number)
        if len(group) == size:
            yield from _split_group(operation, group, lines, size, message_limit)
            group, lines = [], []
    if group:
        yield from _split_group(operation, group, lines, size, message_limit)


def _split_group(operation: JobOperation, group: list[dict[str, Any]], lines: list[int],
                 size: int, message_limit: int) -> list[list[dict[str, Any]]]:
    try:
        return split_items(operation, group, size, message_limit)
    except ItemTooLargeError as exc:
        raise BatchFileError(
            f"line {lines[exc.index]}: the item is too large for one message: with its "
            f"result it needs {exc.size:,} bytes, over what a {message_limit:,}-byte "
            "message holds beside the request's own fields (the limit is the smaller of "
            "pqkms's and the NATS server's max_payload); an item holds at most 1 MiB "
            "(1,048,576 bytes) of plaintext or message") from None


def count_chunks(path: Path, operation: JobOperation, chunk_size: int, *,
                 raw_lines: bool = False,
                 message_limit: int = DEFAULT_MESSAGE_LIMIT) -> tuple[int, int]:
    """``(chunks, items)`` of the input, reading it once."""
    chunks = items = 0
    for chunk in iter_chunks(path, operation, chunk_size, raw_lines=raw_lines,
                             message_limit=message_limit):
        chunks += 1
        items += len(chunk)
    return chunks, items


# -- state -----------------------------------------------------------------------------------


def _fresh_state(options: BatchOptions, job_id: str) -> BatchState:
    stat = options.input_path.stat()
    return BatchState(
        job_id=job_id, operation=options.operation.value,
        input_path=str(options.input_path.resolve()), input_size=stat.st_size,
        input_mtime_ns=stat.st_mtime_ns, chunk_size=options.chunk_size,
        raw_lines=options.raw_lines, key_version=options.key_version,
        algorithm=options.algorithm, total_chunks=0, total_items=0)


def _load_state(path: Path) -> BatchState | None:
    try:
        raw = orjson.loads(path.read_bytes())
        return BatchState(**raw)
    except FileNotFoundError:
        return None
    except (orjson.JSONDecodeError, TypeError) as exc:
        raise BatchFileError(f"unreadable state file {path} ({exc}); delete it to "
                             "start over") from None


def _count_output(path: Path, length: int) -> ItemCounts:
    """The outcomes of the results in the first ``length`` bytes of an output (a state
    file of an earlier version did not record them)."""
    counts = ItemCounts()
    with path.open("rb") as out:
        read = 0
        for line in out:
            read += len(line)
            if read > length:
                break
            counts.add([orjson.loads(line)])
    return counts


def _save_state(path: Path, state: BatchState) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("wb") as out:
        out.write(orjson.dumps(asdict(state), option=orjson.OPT_INDENT_2))
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)


def _resume_or_start(options: BatchOptions) -> tuple[BatchState, bool]:
    """The state to continue from and whether it is a resumed run."""
    current = _fresh_state(options, options.job_id or uuid.uuid4().hex)
    recorded = _load_state(state_path(options.output_path))
    if recorded is None:
        return current, False
    differing = recorded.same_run(current)
    if differing:
        raise BatchFileError(
            f"{state_path(options.output_path)} belongs to another run (differs in "
            f"{', '.join(differing)}); use the same arguments to resume, or delete it to "
            "start over")
    if options.job_id and options.job_id != recorded.job_id:
        raise BatchFileError(f"the interrupted run used job id {recorded.job_id}, not "
                             f"{options.job_id}; drop --job-id to resume it")
    return recorded, True


# -- progress --------------------------------------------------------------------------------


@dataclass
class Progress:
    """A one-line progress bar on a stream: items done / total, items per second."""

    total: int
    done: int = 0
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    width: int = 30
    interval: float = 0.2
    _started: float = field(default_factory=time.monotonic)
    _base: int = 0
    _shown: float = 0.0

    def __post_init__(self) -> None:
        self._base = self.done

    @property
    def done_here(self) -> int:
        """Items done since this progress line started (not counting a resumed run's)."""
        return self.done - self._base

    def advance(self, items: int, *, force: bool = False) -> None:
        """Count ``items`` more done and redraw (at most every ``interval`` seconds)."""
        self.done += items
        now = time.monotonic()
        if not force and now - self._shown < self.interval:
            return
        self._shown = now
        rate = (self.done - self._base) / max(now - self._started, 1e-9)
        share = self.done / self.total if self.total else 1.0
        filled = int(share * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        line = f"[{bar}] {self.done}/{self.total} items {share:6.1%}  {rate:,.0f} items/s"
        if self.stream.isatty():
            self.stream.write(f"\r{line}\x1b[K")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self) -> None:
        """End the progress line."""
        if self.stream.isatty():
            self.stream.write("\n")
            self.stream.flush()


# -- connecting ----------------------------------------------------------------------------------


async def connect(servers: str, api_key: str, *, timeout: float = 10.0) -> PqkmsClient:
    """A client owning a NATS connection; :class:`BatchFileError` when NATS cannot be
    reached within ``timeout`` seconds."""
    try:
        return await PqkmsClient.connect(servers, api_key, connect_timeout=timeout)
    except ConnectionError as exc:
        raise BatchFileError(str(exc)) from None


# -- running -----------------------------------------------------------------------------------

#: While a chunk's results are waited for, how often the job is checked for having been
#: deleted or made again.
_REMADE_CHECK_SECONDS = 5.0


def _check_same_job(created_at: object, first: list[str], state_file: Path) -> None:
    """Every chunk this run submits must go to the same job: one made again meanwhile
    (the job deleted by another run with the same job id, then this run's next chunk
    made it anew) lacks the chunks submitted before, and would never complete."""
    if not isinstance(created_at, str) or not created_at:
        return  # a worker from before the field
    if not first:
        first.append(created_at)
    elif created_at != first[0]:
        raise BatchFileError(
            "the job was deleted and made again while this run submitted it (another run "
            f"with the same job id?); delete {state_file} and run again to start a new job")


def _job_gone(job_id: str, state_file: Path) -> BatchFileError:
    return BatchFileError(
        f"job {job_id} no longer exists (deleted by another run with the same job id, or "
        f"expired); delete {state_file} and run again to start a new job")


async def _chunk_results(client: PqkmsClient, job_id: str, index: int, poll_seconds: float,
                         state_file: Path, job_made: list[str]) -> dict[str, Any]:
    """The chunk's results once it is done. A job that no longer exists (deleted by
    another run of the same ``--job-id``, or expired), or that was made again (this
    run's next chunks made it anew without the chunks before), stops the run: asked of
    its status every ``_REMADE_CHECK_SECONDS`` of waiting."""
    delay = poll_seconds
    not_done = chunk_not_done_message(index, job_id)
    waited = 0.0
    while True:
        try:
            return await client.chunk_results(job_id, index)
        except PqkmsError as exc:
            if exc.code != ErrorCode.NOT_FOUND.value:
                raise
            if exc.message != not_done:
                raise _job_gone(job_id, state_file) from None
        await asyncio.sleep(delay)
        waited += delay
        delay = min(delay * 1.5, 2.0)
        if waited >= _REMADE_CHECK_SECONDS:
            waited = 0.0
            try:
                status = await client.job_status(job_id)
            except PqkmsError as exc:
                if exc.code == ErrorCode.NOT_FOUND.value:
                    raise _job_gone(job_id, state_file) from None
                raise
            _check_same_job(status.get("created_at"), job_made, state_file)


async def run_batch_file(client: PqkmsClient, options: BatchOptions, *,
                         progress_stream: TextIO | None = None,
                         on_chunk: Callable[[BatchState], None] | None = None,
                         ) -> BatchSummary:
    """Run the input through a job and write its results to the output, resuming an
    interrupted run of the same arguments. ``on_chunk`` is called after each chunk is
    durably written; an exception from it stops the run there (the CLI's Ctrl-C,
    :mod:`pqkms.batch_interrupt`)."""
    check_options(options)
    started = time.monotonic()
    state, resumed = _resume_or_start(options)
    state_file = state_path(options.output_path)
    if not resumed:
        # Cut as the client cuts: a chunk over the server's max_payload cannot be sent.
        # The limit is recorded, so that a resume cuts the same chunks.
        state.message_limit = min(options.message_limit, client.fitting_message_limit)
        state.total_chunks, state.total_items = count_chunks(
            options.input_path, options.operation, options.chunk_size,
            raw_lines=options.raw_lines, message_limit=state.message_limit)
        if state.total_chunks == 0:
            options.output_path.write_bytes(b"")
            return BatchSummary(state.job_id, 0, 0, 0, 0, 0, 0,
                                time.monotonic() - started, False)
        options.output_path.write_bytes(b"")
        state.record(ItemCounts())
        _save_state(state_file, state)
    elif not options.output_path.is_file() or (
            options.output_path.stat().st_size < state.output_bytes):
        raise BatchFileError(f"{options.output_path} is shorter than the interrupted run "
                             f"wrote; delete {state_file} to start over")
    counts = state.counts or _count_output(options.output_path, state.output_bytes)
    skipped = state.chunks_written
    progress = Progress(state.total_items, state.items_written,
                        stream=progress_stream or sys.stderr)

    pending: asyncio.Queue[tuple[int, asyncio.Task[dict[str, Any]]] | None] = asyncio.Queue(
        maxsize=max(1, options.window))

    async def produce() -> None:
        chunks = iter_chunks(options.input_path, options.operation, options.chunk_size,
                             raw_lines=options.raw_lines, message_limit=state.message_limit)
        for index, chunk in enumerate(chunks):
            if index < state.chunks_written:
                continue
            if index >= state.total_chunks:
                raise BatchFileError("the input changed while it was read")
            task = asyncio.create_task(client.submit_chunk(
                state.job_id, options.operation, index, state.total_chunks, chunk,
                key_version=options.key_version, algorithm=options.algorithm))
            await pending.put((index, task))
        await pending.put(None)

    job_made: list[str] = []  # the job's creation as the first submit answered it
    producer = asyncio.create_task(produce())
    try:
        with options.output_path.open("r+b") as out:
            out.truncate(state.output_bytes)
            out.seek(state.output_bytes)
            while True:
                if producer.done():
                    producer.result()  # raise the producer's error, if it failed
                    entry = await pending.get()  # it finished: everything is queued
                else:
                    getter = asyncio.ensure_future(pending.get())
                    await asyncio.wait({getter, producer}, return_when=asyncio.FIRST_COMPLETED)
                    if not getter.done():
                        getter.cancel()
                        continue
                    entry = getter.result()
                if entry is None:
                    break
                index, submitted = entry
                _check_same_job((await submitted).get("created_at"), job_made, state_file)
                chunk = await _chunk_results(client, state.job_id, index, options.poll_seconds,
                                             state_file, job_made)
                results = chunk["results"]
                data = b"".join(orjson.dumps(result) + b"\n" for result in results)
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
                counts.add(results)
                state.chunks_written = index + 1
                state.items_written += len(results)
                state.output_bytes += len(data)
                state.record(counts)
                _save_state(state_file, state)
                progress.advance(len(results))
                if on_chunk is not None:
                    on_chunk(state)
        await producer
    finally:
        if not producer.done():
            producer.cancel()
            with contextlib.suppress(BaseException):
                await producer
        while not pending.empty():
            entry = pending.get_nowait()
            if entry is not None:
                entry[1].cancel()
    progress.advance(0, force=True)
    progress.finish()
    # Before the state file goes: a run stopped in between deletes it when run again.
    job_kept = "--keep-job" if options.keep_job else await _delete_job(client, state.job_id)
    state_file.unlink(missing_ok=True)
    return BatchSummary(
        job_id=state.job_id, total_items=state.total_items, total_chunks=state.total_chunks,
        items_this_run=progress.done_here, chunks_skipped=skipped,
        succeeded=counts.succeeded, failed=counts.failed, seconds=time.monotonic() - started,
        resumed=resumed, not_verified=counts.not_verified, job_kept=job_kept)


async def _delete_job(client: PqkmsClient, job_id: str) -> str | None:
    """Delete the finished job; why it could not be, or ``None``. A job already gone
    (deleted by an earlier attempt) counts as deleted. The output is complete either
    way: a failure here fails nothing."""
    try:
        await client.delete_job(job_id)
    except PqkmsError as exc:
        if exc.code != ErrorCode.NOT_FOUND.value:
            return f"it could not be deleted ({exc.code}: {exc.message})"
    except (TimeoutError, NatsError) as exc:
        return f"it could not be deleted ({type(exc).__name__})"
    return None
