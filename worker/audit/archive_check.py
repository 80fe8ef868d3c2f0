"""``pqkms audit verify-archive``: check archive files, alone and against the database.

In the files, given oldest first (a chain may go on from one file to the next): every
record's hash recomputed, seqs contiguous per chain, every ``prev_hash`` the hash of the
record before it (record 1: the genesis hash). A chain whose first record in the files
is not record 1 continues an archive that was not given: its first link is unchecked
(a note).

Against the database, when given: a chain whose anchor (``archived_seq``) is a record
of the files must have that record's hash as its anchor hash, the link on which the
records still in the database hang; each file's SHA-256 should be that of an archive
run recorded in the database or in the files (a note otherwise: a file from another
database, or edited).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from schemas.audit import AUDIT_ARCHIVE_OPERATION
from worker.audit.archive_file import ArchiveFileError, file_sha256, read_archive
from worker.audit.archive_record import ArchiveAttestation, attestation_of
from worker.audit.entry import GENESIS_HASH
from worker.audit.verify import Finding, Severity
from worker.store.audit_log import AuditLog, ChainHead

__all__ = ["ArchiveCheck", "verify_archive_files"]


@dataclass(slots=True)
class _ChainState:
    first_seq: int
    last_seq: int
    last_hash: str
    # seq -> hash of the records an anchor could point at (each file's last one per chain)
    ends: dict[int, str] = field(default_factory=dict)


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


def _check_file(path: Path, chains: dict[str, _ChainState], check: ArchiveCheck,
                attested: list[ArchiveAttestation]) -> None:
    findings = check.findings
    last_in_file: dict[str, tuple[int, str]] = {}
    try:
        for _, entry in read_archive(path):
            check.records += 1
            seq, chain_id = entry.seq, entry.chain_id
            if entry.computed_hash() != entry.record_hash:
                findings.append(Finding(chain_id, seq, f"{path.name}: content does not match "
                                                       "its record_hash (record edited)"))
            elif (attestation := attestation_of(entry)) is not None:
                attested.append(attestation)
            state = chains.get(chain_id)
            if state is None:
                chains[chain_id] = _ChainState(seq, seq, entry.record_hash)
                if seq == 1 and entry.prev_hash != GENESIS_HASH:
                    findings.append(Finding(chain_id, seq, f"{path.name}: prev_hash is not "
                                                           "the genesis hash"))
                elif seq != 1:
                    findings.append(Finding(
                        chain_id, seq, f"{path.name}: the chain starts at seq {seq} here: "
                        f"records 1..{seq - 1} are in an archive not given (link unchecked)",
                        Severity.NOTE))
            elif seq != state.last_seq + 1:
                findings.append(Finding(chain_id, seq, f"{path.name}: expected seq "
                                                       f"{state.last_seq + 1} (records missing, "
                                                       "repeated or out of order)"))
                state.last_seq, state.last_hash = seq, entry.record_hash
            else:
                if entry.prev_hash != state.last_hash:
                    findings.append(Finding(chain_id, seq, f"{path.name}: prev_hash does not "
                                                           f"match the hash of record {seq - 1}"))
                state.last_seq, state.last_hash = seq, entry.record_hash
            last_in_file[chain_id] = (seq, entry.record_hash)
    except ArchiveFileError as exc:
        findings.append(Finding(path.name, None, str(exc), scope="file"))
    for chain_id, (seq, digest) in last_in_file.items():
        chains[chain_id].ends[seq] = digest


def _against_database(chains: dict[str, _ChainState], heads: dict[str, ChainHead],
                      check: ArchiveCheck) -> None:
    for chain_id, state in sorted(chains.items()):
        head = heads.get(chain_id)
        if head is None:
            check.findings.append(Finding(chain_id, None, "not in this database (no "
                                          "pqkms_audit_chain row)", Severity.NOTE))
            continue
        anchor = head.archived_seq
        if state.first_seq <= anchor <= state.last_seq:
            expected = state.ends.get(anchor)
            if expected is None:
                check.findings.append(Finding(chain_id, anchor, "the database's archive anchor "
                                              "is not the last record of a file",
                                              Severity.ERROR))
            elif expected != head.archived_hash:
                check.findings.append(Finding(chain_id, anchor, "the database's archive "
                                              "anchor differs from this record in the file"))
        elif anchor < state.last_seq:
            check.findings.append(Finding(
                chain_id, anchor + 1, f"records {anchor + 1}..{state.last_seq} are in a file "
                "but not archived in the database (an archive stopped before it deleted "
                "them: they are in the database too)", Severity.NOTE))


async def verify_archive_files(paths: Sequence[Path], log: AuditLog | None) -> ArchiveCheck:
    """Check ``paths`` (oldest first), and against ``log``'s chains and archive runs
    unless it is ``None``."""
    check = ArchiveCheck(files=len(paths))
    chains: dict[str, _ChainState] = {}
    attested: list[ArchiveAttestation] = []  # earlier runs' records, archived since
    for path in paths:
        _check_file(path, chains, check, attested)
    check.chains = len(chains)
    if log is None:
        return check
    async with log.snapshot() as snapshot:
        heads = {head.chain_id: head for head in await snapshot.chains()}
        runs = [attestation_of(entry)
                for entry in await snapshot.entries_of(AUDIT_ARCHIVE_OPERATION)]
    _against_database(chains, heads, check)
    recorded = {run.sha256 for run in [*runs, *attested] if run is not None}
    for path in paths:
        try:
            digest = file_sha256(path)
        except OSError:
            continue  # already reported as unreadable
        if digest not in recorded:
            check.findings.append(Finding(path.name, None, "no archive run recorded in this "
                                          "database or these files wrote this file (another "
                                          "database's, or edited)", Severity.NOTE,
                                          scope="file"))
    check.database = f"{len(heads)} chain(s), {len(runs)} archive run(s) recorded"
    check.findings.sort(key=lambda f: (f.severity is Severity.NOTE, f.chain_id, f.seq or 0))
    return check
