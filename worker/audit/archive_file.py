"""Audit archive files: the records ``pqkms audit archive`` moved out of the database.

One record per line, each line exactly a line of a ``PQKMS_AUDIT`` stream message (the
record's JSON with both hashes), ordered by chain and seq; gzip-compressed when the
file name ends in ``.gz``. A file is written beside its final name (``NAME.partial``,
mode 0600), synced, and only then given its final name, so a file under its final name
is complete.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from worker.audit.entry import AuditEntry

__all__ = ["ArchiveFileError", "ArchiveWriter", "file_sha256", "read_archive"]

_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20


class ArchiveFileError(ValueError):
    """An archive file that cannot be written or read as one."""


def file_sha256(path: Path) -> str:
    """The SHA-256 of the file's bytes, hex."""
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class ArchiveWriter:
    """Writes records to ``NAME.partial``; :meth:`finish` syncs it, :meth:`commit`
    makes it ``NAME``, :meth:`discard` removes it."""

    def __init__(self, path: Path) -> None:
        if path.exists():
            raise ArchiveFileError(f"{path} exists: an archive file is never overwritten")
        if not path.parent.exists():
            raise ArchiveFileError(f"{path.parent} does not exist")
        if not path.parent.is_dir():
            raise ArchiveFileError(f"{path.parent} is not a directory")
        self.path = path
        self._partial = path.with_name(path.name + ".partial")
        try:
            descriptor = os.open(self._partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise ArchiveFileError(
                f"{self._partial} exists: another archive is being written there, or one "
                "was interrupted (remove it once no archive runs)") from None
        self._raw: IO[bytes] = os.fdopen(descriptor, "wb")
        self._out: IO[bytes] | gzip.GzipFile = self._raw
        if path.name.endswith(".gz"):
            self._out = gzip.GzipFile(fileobj=self._raw, mode="wb", mtime=0)
        self.records = 0

    def write(self, entry: AuditEntry) -> None:
        """Append one record."""
        try:
            self._out.write(entry.to_message() + b"\n")
        except OSError as exc:
            raise self._failed(exc) from None
        self.records += 1

    def finish(self) -> str:
        """Close and sync the partial file; the SHA-256 of its bytes."""
        try:
            if self._out is not self._raw:
                self._out.close()
            self._raw.flush()
            os.fsync(self._raw.fileno())
            self._raw.close()
            return file_sha256(self._partial)
        except OSError as exc:
            raise self._failed(exc) from None

    def _failed(self, exc: OSError) -> ArchiveFileError:
        """A write that failed (a full disk, say): nothing is archived."""
        return ArchiveFileError(f"{self._partial} could not be written "
                                f"({exc.strerror or type(exc).__name__}); nothing was archived")

    def commit(self) -> None:
        """Give the finished file its final name (never over another file)."""
        try:
            os.link(self._partial, self.path)  # fails where a file appeared meanwhile
        except FileExistsError:
            self.discard()
            raise ArchiveFileError(f"{self.path} appeared while the archive was "
                                   "written") from None
        except OSError:  # a file system without hard links
            if self.path.exists():
                self.discard()
                raise ArchiveFileError(f"{self.path} appeared while the archive was "
                                       "written") from None
            os.rename(self._partial, self.path)
        else:
            self._partial.unlink()
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def discard(self) -> None:
        """Close and remove the partial file (nothing is archived)."""
        with contextlib.suppress(Exception):
            if self._out is not self._raw:
                self._out.close()
        with contextlib.suppress(Exception):
            self._raw.close()
        self._partial.unlink(missing_ok=True)


def _lines(path: Path) -> Iterator[bytes]:
    with path.open("rb") as probe:
        compressed = probe.read(2) == _GZIP_MAGIC
    opener = gzip.open if compressed else open
    with opener(path, "rb") as source:
        yield from source


def read_archive(path: Path) -> Iterator[tuple[int, AuditEntry]]:
    """``(line number, record)`` for each line; :class:`ArchiveFileError` names the
    first line that is not a record (or a file that cannot be read)."""
    number = 0
    try:
        for number, line in enumerate(_lines(path), start=1):
            if not line.strip():
                continue
            try:
                yield number, AuditEntry.from_message(line)
            except ValueError:
                raise ArchiveFileError(f"{path}, line {number}: not an audit record") from None
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise ArchiveFileError(
            f"{path}: cannot be read after line {number} ({type(exc).__name__})") from None
