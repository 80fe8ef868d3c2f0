"""``pqkms audit verify-archive``: check archive files, alone and against the database.

In the files, given oldest first (a chain may go on from one file to the next): every
record's hash recomputed, seqs contiguous per chain, every ``prev_hash`` the hash of the
record before it (record 1: the genesis hash). A record repeated with the same hash (an
archive run again after one that stopped before deleting) is a note; with another hash,
an error. A chain whose first record in the files is not record 1 continues an archive
that was not given: its first link is unchecked (a note).

Against the database, when given: every chain archived in the database must be in the
files up to its anchor (``archived_seq``), whose record there must carry the anchor's
hash, the link on which the records still in the database hang; each file's SHA-256
should be that of an archive run recorded in the database or in the files (a note
otherwise: a file from another database, or edited or recompressed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from schemas.audit import AUDIT_ARCHIVE_OPERATION
from worker.audit.archive_file import ArchiveFileError, file_sha256, read_archive
from worker.audit.archive_record import run_of
from worker.audit.entry import GENESIS_HASH, AuditEntry
from worker.audit.verify import Finding, Severity
from worker.store.audit_log import AuditLog, ChainHead

__all__ = ["ArchiveCheck", "verify_archive_files"]


@dataclass(slots=True)
class _ChainState:
    first_seq: int
    last_seq: int
    last_hash: str
    # The hash of the record at the database's anchor, once read.
    anchor_hash: str | None = None
    # Inside records repeated from an earlier file: the last one's seq and hash.
    repeat_seq: int | None = None
    repeat_hash: str = ""


@dataclass(slots=True)
class ArchiveCheck:
    """What ``verify-archive`` prints."""

    files: int = 0
    records: int = 0
    chains: int = 0
    database: str = "not checked"
    findings: list[Finding] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        """No error found."""
        return not any(f.severity is Severity.ERROR for f in self.findings)

    def lines(self) -> list[str]:
        """Findings, then a summary line."""
        errors = sum(f.severity is Severity.ERROR for f in self.findings)
        verdict = "intact" if self.intact else f"NOT intact: {errors} error(s)"
        return [*(f.line() for f in self.findings),
                f"archive {verdict}: {self.files} file(s), {self.records} record(s), "
                f"{self.chains} chain(s); database: {self.database}"]


class _FileWalk:
    """Reads the files in order, chain by chain state."""

    def __init__(self, check: ArchiveCheck, anchors: Mapping[str, int]) -> None:
        self.check = check
        self.anchors = anchors
        self.chains: dict[str, _ChainState] = {}
        self.sha256s: set[str] = set()  # of the runs recorded in the files
        self._repeats: dict[tuple[str, str], list[int]] = {}

    def file(self, path: Path) -> None:
        try:
            for _, entry in read_archive(path):
                self.check.records += 1
                self._record(path.name, entry)
        except ArchiveFileError as exc:
            self.check.findings.append(Finding(path.name, None, str(exc), scope="file"))
        for chain_id, state in self.chains.items():
            if state.repeat_seq is not None:
                self._error(chain_id, state.repeat_seq, f"{path.name}: records repeated from "
                            f"an earlier file stop at seq {state.repeat_seq}, before its last "
                            f"one ({state.last_seq})")
                state.repeat_seq = None
        for (name, chain_id), seqs in self._repeats.items():
            self.check.findings.append(Finding(
                chain_id, seqs[0], f"{name}: records {seqs[0]}..{seqs[-1]} repeated, "
                "identical (an archive run again after one that stopped before deleting)",
                Severity.NOTE))
        self._repeats.clear()

    def _error(self, chain_id: str, seq: int, problem: str) -> None:
        self.check.findings.append(Finding(chain_id, seq, problem))

    def _record(self, name: str, entry: AuditEntry) -> None:
        seq, chain_id, digest = entry.seq, entry.chain_id, entry.record_hash
        if entry.computed_hash() != digest:
            self._error(chain_id, seq, f"{name}: content does not match its record_hash "
                                       "(record edited)")
        elif (run := run_of(entry)) is not None:
            self.sha256s.add(run.sha256)
        state = self.chains.get(chain_id)
        if state is None:
            state = self.chains[chain_id] = _ChainState(seq, seq, digest)
            if seq == 1 and entry.prev_hash != GENESIS_HASH:
                self._error(chain_id, seq, f"{name}: prev_hash is not the genesis hash")
            elif seq != 1:
                self.check.findings.append(Finding(
                    chain_id, seq, f"{name}: the chain starts at seq {seq} here: records "
                    f"1..{seq - 1} are in an archive not given (link unchecked)",
                    Severity.NOTE))
        elif state.first_seq <= seq <= state.last_seq:
            self._repeat(name, state, entry)
            return
        elif seq != state.last_seq + 1:
            self._error(chain_id, seq, f"{name}: expected seq {state.last_seq + 1} "
                                       "(records missing or out of order)")
            state.last_seq, state.last_hash = seq, digest
        else:
            if entry.prev_hash != state.last_hash:
                self._error(chain_id, seq, f"{name}: prev_hash does not match the hash of "
                                           f"record {seq - 1}")
            state.last_seq, state.last_hash = seq, digest
        if seq == self.anchors.get(chain_id):
            state.anchor_hash = digest


    def _repeat(self, name: str, state: _ChainState, entry: AuditEntry) -> None:
        """A record an earlier file holds: harmless only as part of the same records up
        to that file's last one (an archive run again after one that stopped before
        deleting). The repeated run must link, and end on the earlier file's last hash:
        a record changed inside it would change every hash after it."""
        seq, chain_id, digest = entry.seq, entry.chain_id, entry.record_hash
        if state.repeat_seq is not None and (seq != state.repeat_seq + 1
                                             or entry.prev_hash != state.repeat_hash):
            self._error(chain_id, seq, f"{name}: repeated records do not follow each other")
        if seq == self.anchors.get(chain_id) and state.anchor_hash not in (None, digest):
            self._error(chain_id, seq, f"{name}: differs from the same record in an earlier "
                                       "file")
        state.repeat_seq, state.repeat_hash = seq, digest
        if seq == state.last_seq:
            if digest != state.last_hash:
                self._error(chain_id, seq, f"{name}: differs from the same record in an "
                                           "earlier file")
            state.repeat_seq = None
        self._repeats.setdefault((name, chain_id), []).append(seq)


def _against_database(chains: Mapping[str, _ChainState], heads: Mapping[str, ChainHead],
                      check: ArchiveCheck) -> None:
    for chain_id, head in sorted(heads.items()):
        anchor = head.archived_seq
        if not anchor:
            continue
        state = chains.get(chain_id)
        if state is None or state.last_seq < anchor:
            held = "none of them" if state is None else f"up to seq {state.last_seq}"
            check.findings.append(Finding(
                chain_id, anchor, f"archived up to here in the database, but the files hold "
                f"{held} (a file not given, or records deleted)"))
        elif state.first_seq > 1:
            check.findings.append(Finding(
                chain_id, 1, f"archived up to seq {anchor} in the database, but the files "
                f"hold it from seq {state.first_seq} on (a file not given, or records "
                "deleted)"))
        elif state.anchor_hash != head.archived_hash:
            check.findings.append(Finding(chain_id, anchor, "the database's archive anchor "
                                          "differs from this record in the files"))
    for chain_id, state in sorted(chains.items()):
        found = heads.get(chain_id)
        if found is None:
            check.findings.append(Finding(chain_id, None, "not in this database (no "
                                          "pqkms_audit_chain row)", Severity.NOTE))
        elif found.archived_seq < state.last_seq:
            check.findings.append(Finding(
                chain_id, found.archived_seq + 1, f"records {found.archived_seq + 1}.."
                f"{state.last_seq} are in a file but not archived in the database (a run "
                "that stopped before deleting them: they are in the database too)",
                Severity.NOTE))


async def verify_archive_files(paths: Sequence[Path], log: AuditLog | None) -> ArchiveCheck:
    """Check ``paths`` (oldest first), and against ``log``'s chains and archive runs
    unless it is ``None``."""
    check = ArchiveCheck(files=len(paths))
    heads: dict[str, ChainHead] = {}
    recorded: set[str] = set()
    if log is not None:
        async with log.snapshot() as snapshot:
            heads = {head.chain_id: head for head in await snapshot.chains()}
            for entry in await snapshot.entries_of(AUDIT_ARCHIVE_OPERATION):
                run = run_of(entry)
                if run is not None:
                    recorded.add(run.sha256)
    walk = _FileWalk(check, {chain_id: head.archived_seq for chain_id, head in heads.items()
                             if head.archived_seq})
    for path in paths:
        walk.file(path)
    check.chains = len(walk.chains)
    if log is None:
        return check
    _against_database(walk.chains, heads, check)
    recorded |= walk.sha256s
    for path in paths:
        try:
            digest = file_sha256(path)
        except OSError:
            continue  # already reported as unreadable
        if digest not in recorded:
            check.findings.append(Finding(path.name, None, "no archive run recorded in this "
                                          "database or these files wrote this file (another "
                                          "database's, or edited or recompressed)",
                                          Severity.NOTE, scope="file"))
    check.database = f"{len(heads)} chain(s), {len(recorded)} archive run(s) known"
    check.findings.sort(key=lambda f: (f.severity is Severity.NOTE, f.chain_id, f.seq or 0))
    return check
