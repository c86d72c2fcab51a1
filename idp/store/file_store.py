"""The embedded store: files in `IDP_KEYS_DIR`, for a single host.

Several gunicorn workers share it: writes take an exclusive `flock` on `.lock`, then replace the
document with an atomic rename, so readers never see half a file and exactly one worker creates
the first key. The ring document holds private keys: it is written 0600 in a 0700 folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from idp.config import Settings
from idp.errors import ConfigError, InvalidToken, RingRefused
from idp.store.base import LEGACY_EPOCH, Budget, Counted, RingJson
from idp.store.counters import MemoryCounters

RING_FILE = "ring.json"
# Files do not forget: the folder has one life, for as long as it exists.
EPOCH = "file"


class FileStore:
    name = "file"
    volatile = False
    epoch = EPOCH

    def __init__(self, root: Path) -> None:
        self.root = root
        self._closed = root / "closed-builds"
        # Files are no place for a counter touched on every request: each worker counts its
        # own budgets (README "Security": without Redis, a budget holds per worker).
        self._counters = MemoryCounters()

    @classmethod
    def create(cls, settings: Settings) -> FileStore:
        root = settings.keys_dir
        try:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
            (root / "closed-builds").mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"IDP_KEYS_DIR={str(root)!r} cannot be created ({exc.strerror}): point it at a "
                "writable folder"
            ) from None
        if not os.access(root, os.W_OK | os.X_OK):
            raise ConfigError(
                f"IDP_KEYS_DIR={str(root)!r} is not writable by this user: fix its owner or mode"
            )
        # mkdir's mode applies only to a folder it creates: one that existed kept its mode
        # (0755, or worse). The ring holds private keys: make the folder 0700 when it is ours,
        # and refuse one that others may write to (they could replace the ring) if it is not.
        # Group-writable is tolerated only for a group of our own: a Kubernetes volume's root
        # belongs to root, group fsGroup, which the issuer runs as or is a member of.
        for folder in (root, root / "closed-builds"):
            info = folder.stat()
            if info.st_mode & 0o077 and info.st_uid == os.geteuid():
                with contextlib.suppress(OSError):
                    os.chmod(folder, 0o700)
                info = folder.stat()
            others_write = info.st_mode & 0o002
            group_writes = info.st_mode & 0o020 and info.st_gid not in {
                os.getegid(),
                *os.getgroups(),  # fsGroup is a supplementary group on OpenShift
            }
            if others_write or group_writes:
                raise ConfigError(
                    f"IDP_KEYS_DIR={str(root)!r}: {folder.name!r} is writable by group or others "
                    f"(mode {info.st_mode & 0o777:o}) and this user cannot change that: use a "
                    "folder of its own, or chmod 700 it as its owner"
                )
        return cls(root)

    def describe(self) -> str:
        return f"files in {self.root}"

    def describe_ring(self) -> str:
        return str(self.root / RING_FILE)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def read_ring(self) -> RingJson | None:
        try:
            text = (self.root / RING_FILE).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise RingRefused(f"the file cannot be read ({exc})") from None
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise RingRefused("the file is not a JSON object (damaged or truncated)")
        return doc

    def update_ring(self, change: Callable[[RingJson | None], RingJson | None]) -> bool:
        with self._locked():
            new = change(self.read_ring())
            if new is not None:
                self._write_atomic(self.root / RING_FILE, json.dumps(new, indent=1).encode())
        return True

    def replace_ring(self, new: RingJson) -> bool:
        with self._locked():
            self._write_atomic(self.root / RING_FILE, json.dumps(new, indent=1).encode())
        return True

    def _write_atomic(self, path: Path, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    # --- build state ---------------------------------------------------------------------

    def _build_path(self, build_id: str) -> Path:
        # Hashed so that no build id can name a path outside the folder.
        return self._closed / hashlib.sha256(build_id.encode()).hexdigest()

    def close_build(self, build_id: str, expires_at: int) -> None:
        self._write_atomic(self._build_path(build_id), str(expires_at).encode())
        self._prune_closed()

    def is_build_closed(self, build_id: str) -> bool:
        # os.path on a str, not Path.exists: every exchange asks, and this is its only stat.
        return os.path.exists(str(self._build_path(build_id)))

    def count_and_check(self, budgets: Sequence[Budget], build_id: str | None = None) -> Counted:
        waits = self._counters.hit(list(budgets), time.time()) if budgets else ()
        closed = build_id is not None and self.is_build_closed(build_id)
        return Counted(closed=closed, retry_after=waits, shared=False)

    def check_build_state(self, epoch: str) -> None:
        if epoch not in (EPOCH, LEGACY_EPOCH):
            raise InvalidToken(
                "this request token was issued by an issuer with another key store: ask the "
                "CI server for a new one"
            )

    def sync(self) -> None:
        """Nothing to mirror: every check reads the folder, which is always current."""

    def _prune_closed(self) -> None:
        now = time.time()
        for entry in self._closed.iterdir():
            with contextlib.suppress(OSError, ValueError):
                if int(entry.read_text()) < now:
                    entry.unlink()
