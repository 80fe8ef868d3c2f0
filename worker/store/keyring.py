"""The master keyring: every key-encryption key a deployment holds, one of them primary.

The primary wraps new seeds; every key in the ring unwraps. The keyring file is text,
one key per line, ``#`` starting a comment::

    # pqkms master keyring
    primary  <base64 of 32 bytes>  # kek 0123456789abcdef
    previous <base64 of 32 bytes>  # kek fedcba9876543210
    next     <base64 of 32 bytes>  # kek 00112233445566aa

``previous`` keys were primary before a rotation and stay until no stored seed uses
them (``pqkms master-key prune``); ``next`` keys were added ahead of a rotation
(``pqkms master-key add``) so every machine can unwrap under them before they become
primary. A file holding one bare base64 line -- the only format before rotation -- is a
keyring of one primary key.

The file is replaced atomically (temporary file, fsync, rename), so a process reading it
at any moment sees the old or the new keyring, never half of one. :class:`KeyringFile`
lets a running worker follow those replacements; :class:`LiveKeyring` is what the key
store consults.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import math
import os
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import structlog

from worker.store.master_key import (
    KEY_SIZE,
    MasterKey,
    MasterKeyError,
    master_key_from_base64,
)

__all__ = [
    "FORCED_RELOAD_INTERVAL_SECONDS",
    "KeyRole",
    "KeySource",
    "KeyringFile",
    "LiveKeyring",
    "MasterKeyring",
    "keyring_file_lock",
    "keyring_from_text",
    "keyring_to_text",
    "load_keyring",
    "write_keyring_file",
]

# A worker missing a KEK re-reads an unchanged keyring file at most this often.
FORCED_RELOAD_INTERVAL_SECONDS = 1.0
_HEADER = (
    "# pqkms master keyring. Secret: keep it mode 0600 and back it up apart from the\n"
    "# database. 'primary' wraps new seeds; every key listed here unwraps. Written by\n"
    "# 'pqkms master-key'; edit by hand only with every worker stopped.\n"
)
_log = structlog.get_logger("pqkms.store")


class KeyRole(StrEnum):
    """The part a key plays in the keyring."""

    PRIMARY = "primary"  # wraps new seeds
    PREVIOUS = "previous"  # a former primary: unwraps until prune drops it
    NEXT = "next"  # added ahead of a rotation: unwraps, becomes primary at rotate


@dataclass(frozen=True)
class MasterKeyring:
    """An immutable set of master keys: one primary, any number of others."""

    primary: MasterKey
    previous: tuple[MasterKey, ...] = ()
    next: tuple[MasterKey, ...] = ()
    _by_id: dict[str, MasterKey] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_id: dict[str, MasterKey] = {}
        for key in self.keys:
            if key.kek_id in by_id:
                raise MasterKeyError(f"The keyring lists key {key.kek_id} twice")
            by_id[key.kek_id] = key
        object.__setattr__(self, "_by_id", by_id)

    @classmethod
    def single(cls, key: MasterKey) -> MasterKeyring:
        """A keyring of one primary key (what a single-key file or variable means)."""
        return cls(primary=key)

    @property
    def keys(self) -> tuple[MasterKey, ...]:
        """Every key, the primary first."""
        return (self.primary, *self.previous, *self.next)

    @property
    def kek_ids(self) -> tuple[str, ...]:
        """Every key's id, the primary first."""
        return tuple(key.kek_id for key in self.keys)

    def get(self, kek_id: str) -> MasterKey | None:
        """The key with this id, or ``None`` when the keyring does not hold it."""
        return self._by_id.get(kek_id)

    def role_of(self, kek_id: str) -> KeyRole | None:
        """The role of the key with this id, or ``None``."""
        if kek_id == self.primary.kek_id:
            return KeyRole.PRIMARY
        if any(key.kek_id == kek_id for key in self.previous):
            return KeyRole.PREVIOUS
        if any(key.kek_id == kek_id for key in self.next):
            return KeyRole.NEXT
        return None

    def with_next(self, key: MasterKey) -> MasterKeyring:
        """This keyring plus ``key`` as a ``next`` key."""
        return MasterKeyring(self.primary, self.previous, (*self.next, key))

    def promoted(self, key: MasterKey) -> MasterKeyring:
        """``key`` as primary; the old primary becomes ``previous``. A key already
        primary leaves the keyring unchanged."""
        if key.kek_id == self.primary.kek_id:
            return self
        previous = tuple(k for k in (self.primary, *self.previous) if k.kek_id != key.kek_id)
        upcoming = tuple(k for k in self.next if k.kek_id != key.kek_id)
        return MasterKeyring(key, previous, upcoming)

    def without(self, kek_ids: Iterable[str]) -> MasterKeyring:
        """This keyring without the named non-primary keys."""
        dropped = set(kek_ids)
        if self.primary.kek_id in dropped:
            raise MasterKeyError("The primary master key cannot be removed from the keyring")
        return MasterKeyring(
            self.primary,
            tuple(k for k in self.previous if k.kek_id not in dropped),
            tuple(k for k in self.next if k.kek_id not in dropped),
        )

    def __repr__(self) -> str:
        return (
            f"MasterKeyring(primary={self.primary.kek_id!r}, "
            f"previous={[k.kek_id for k in self.previous]!r}, "
            f"next={[k.kek_id for k in self.next]!r})"
        )

    __str__ = __repr__


# -- text format ----------------------------------------------------------------------


def keyring_from_text(text: str) -> MasterKeyring:
    """Parse keyring text; a lone bare base64 line is one primary key.

    Error messages name line numbers, never line content (it is key material).
    """
    entries: list[tuple[int, list[str]]] = []
    for number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.split("#", 1)[0].strip()
        if line:
            entries.append((number, line.split()))
    roles_named = [words[0] for _, words in entries]
    if len(entries) <= 1 and not set(roles_named) & set(KeyRole):
        # The single-key format: one bare base64 line. (An empty file is reported as a
        # zero-length key, whatever else is on a lone line as invalid base64.)
        return MasterKeyring.single(
            master_key_from_base64(" ".join(entries[0][1]) if entries else "")
        )
    roles: dict[KeyRole, list[MasterKey]] = {role: [] for role in KeyRole}
    for number, words in entries:
        if len(words) != 2 or words[0] not in KeyRole.__members__.values():
            raise MasterKeyError(
                f"line {number}: expected '<primary|previous|next> <base64 key>'"
            )
        try:
            key = master_key_from_base64(words[1])
        except MasterKeyError as exc:
            raise MasterKeyError(f"line {number}: {exc}") from None
        roles[KeyRole(words[0])].append(key)
    if len(roles[KeyRole.PRIMARY]) != 1:
        raise MasterKeyError(
            f"a keyring needs exactly one primary key, found {len(roles[KeyRole.PRIMARY])}"
        )
    return MasterKeyring(
        roles[KeyRole.PRIMARY][0], tuple(roles[KeyRole.PREVIOUS]), tuple(roles[KeyRole.NEXT])
    )


def keyring_to_text(keyring: MasterKeyring) -> str:
    """The keyring file content: a header, then one ``role key  # kek id`` line per key."""
    lines = [_HEADER]
    for key in keyring.keys:
        role = keyring.role_of(key.kek_id)
        assert role is not None  # every key of the ring has a role
        encoded = base64.b64encode(key.key).decode("ascii")
        lines.append(f"{role.value:<8} {encoded}  # kek {key.kek_id}\n")
    return "".join(lines)


# -- files ----------------------------------------------------------------------------

_FileSignature = tuple[int, int, int, int, int]


def _signature(stat: os.stat_result) -> _FileSignature:
    # An atomic replacement always brings a new inode; size and times catch in-place edits.
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


_warned_paths: set[str] = set()


def _warn_if_readable_by_others(path: Path, stat: os.stat_result) -> None:
    """Once per file and process: a master key file others may read or write is logged.

    Not refused: a secret mounted by an orchestrator may come with a wider mode and an
    access control of its own (files pqkms creates are 0600).
    """
    if stat.st_mode & 0o077 and str(path) not in _warned_paths:
        _warned_paths.add(str(path))
        _log.warning("master_key_file_permissions", path=str(path),
                     mode=oct(stat.st_mode & 0o777),
                     effect="other users may read the master key; chmod 600 it")


def _read_keyring(path: Path) -> tuple[MasterKeyring, _FileSignature]:
    """Read and parse the file, with the signature of exactly the bytes read."""
    try:
        with open(path, "rb") as handle:
            stat = os.fstat(handle.fileno())
            data = handle.read()
    except FileNotFoundError:
        raise MasterKeyError(f"Master key file {path} does not exist") from None
    except OSError as exc:
        raise MasterKeyError(f"Cannot read master key file {path}: {exc}") from None
    _warn_if_readable_by_others(path, stat)
    try:
        text = data.decode("utf-8")  # keys are ASCII; comments may not be
    except UnicodeDecodeError:
        raise MasterKeyError(f"Master key file {path} is malformed: not UTF-8 text") from None
    try:
        keyring = keyring_from_text(text)
    except MasterKeyError as exc:
        raise MasterKeyError(f"Master key file {path} is malformed: {exc}") from None
    return keyring, _signature(stat)


def load_keyring(path: Path, *, create: bool = False) -> MasterKeyring:
    """Read a keyring file, creating a one-key file (mode 0600) when absent and ``create``."""
    path = Path(path)
    if create and not path.exists():
        _create_key_file(path)
    return _read_keyring(path)[0]


def _create_key_file(path: Path) -> None:
    """Create a file of one fresh key in the single-key format.

    The key is written to a private temporary file which is then hard-linked into
    place, so two processes starting together agree on one key and no reader ever sees
    a half-written file.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise MasterKeyError(f"Cannot create directory for master key {path}: {exc}") from exc
    content = base64.b64encode(secrets.token_bytes(KEY_SIZE)) + b"\n"
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        _write_private_file(tmp, content)
        # If another process created it first, keep theirs: both then read the same key.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
        _fsync_directory(path.parent)
    except OSError as exc:
        raise MasterKeyError(f"Cannot create master key file {path}: {exc}") from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _write_private_file(path: Path, content: bytes) -> None:
    """Create ``path`` (mode 0600, must not exist), write ``content`` and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(directory: Path) -> None:
    """Make a rename or link in ``directory`` durable (best effort)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_keyring_file(path: Path, keyring: MasterKeyring) -> None:
    """Replace the keyring file atomically: a 0600 temporary file beside it, written and
    fsynced, renamed over the old one, then the directory fsynced."""
    path = Path(path)
    content = keyring_to_text(keyring).encode("ascii")
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        _write_private_file(tmp, content)
        os.replace(tmp, path)
        _fsync_directory(path.parent)
    except OSError as exc:
        raise MasterKeyError(f"Cannot write master key file {path}: {exc}") from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


@contextlib.contextmanager
def keyring_file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock beside the keyring file (``.<name>.lock``) so two
    ``pqkms master-key`` commands on one machine never lose each other's keys."""
    path = Path(path)
    lock_path = path.with_name(f".{path.name}.lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise MasterKeyError(f"Cannot create the keyring lock {lock_path}: {exc}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MasterKeyError(
                f"Another 'pqkms master-key' command holds {lock_path}; try again when it ends"
            ) from None
        yield
    finally:
        os.close(fd)  # closing releases the lock


class KeyringFile:
    """A keyring file a long-running process follows as it is replaced.

    :meth:`reload_if_changed` costs one ``stat`` when the file is unchanged. A forced
    reload (a KEK is missing) re-reads an unchanged file at most once per
    ``forced_reload_interval`` seconds, and a file that failed to read is retried no
    more often either.
    """

    def __init__(
        self,
        path: Path,
        *,
        forced_reload_interval: float = FORCED_RELOAD_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Follow ``path``; nothing is read until :meth:`load`."""
        self.path = Path(path)
        self._interval = forced_reload_interval
        self._clock = clock
        self._signature: _FileSignature | None = None
        self._last_attempt = -math.inf
        self._last_failed = False

    def load(self) -> MasterKeyring:
        """Read the file now (raises :class:`MasterKeyError`)."""
        self._last_attempt = self._clock()
        try:
            keyring, self._signature = _read_keyring(self.path)
        except MasterKeyError:
            self._last_failed = True
            raise
        self._last_failed = False
        return keyring

    def reload_if_changed(self, *, force: bool = False) -> MasterKeyring | None:
        """The keyring re-read when the file changed since the last read (or, with
        ``force``, when that read is older than the interval); else ``None``."""
        recent = self._clock() - self._last_attempt < self._interval
        if self._last_failed and recent:
            return None
        try:
            signature = _signature(os.stat(self.path))
        except OSError:
            signature = None  # missing or unreadable: load() reports why
        if signature is not None and signature == self._signature and (not force or recent):
            return None
        return self.load()


# -- what the key store consults --------------------------------------------------------

KeySource = MasterKey | MasterKeyring | KeyringFile


class LiveKeyring:
    """The keyring a process works with, following its file when it has one.

    Everything here is synchronous, so within one event loop a reload is never seen
    half-done. Which primaries have had their key-check value verified against the
    database is tracked here; the verification itself is the key store's job.
    """

    def __init__(self, source: KeySource) -> None:
        """Load ``source`` (raises :class:`MasterKeyError` when its file cannot be read)."""
        self._file: KeyringFile | None = None
        if isinstance(source, KeyringFile):
            self._file = source
            self._current = source.load()
        elif isinstance(source, MasterKeyring):
            self._current = source
        else:
            self._current = MasterKeyring.single(source)
        self._verified: set[str] = set()

    @property
    def current(self) -> MasterKeyring:
        """The keyring as last read."""
        return self._current

    @property
    def follows_file(self) -> bool:
        """Whether the keyring comes from a file that can change under us."""
        return self._file is not None

    def refresh(self, *, force: bool = False) -> MasterKeyring:
        """Re-read the file if it changed (see :class:`KeyringFile`); a file that cannot
        be read or parsed leaves the current keyring in place and is logged."""
        if self._file is None:
            return self._current
        try:
            fresh = self._file.reload_if_changed(force=force)
        except MasterKeyError as exc:
            _log.warning("master_keyring_reload_failed", reason=str(exc))
            return self._current
        if fresh is not None and fresh != self._current:
            _log.info(
                "master_keyring_reloaded",
                primary=fresh.primary.kek_id,
                kek_ids=list(fresh.kek_ids),
            )
            self._current = fresh
        return self._current

    def key_for(self, kek_id: str) -> MasterKey | None:
        """The key with this id; a missing one makes the file be re-read (rate-limited)
        once before giving up."""
        key = self._current.get(kek_id)
        if key is None:
            key = self.refresh(force=True).get(kek_id)
        if key is None:
            _log.warning("master_key_missing", kek_id=kek_id, held=list(self._current.kek_ids))
        return key

    def is_verified(self, kek_id: str) -> bool:
        """Whether this key's check value was found in the database."""
        return kek_id in self._verified

    def mark_verified(self, kek_id: str) -> None:
        """Record that this key's check value matched the database's."""
        self._verified.add(kek_id)

