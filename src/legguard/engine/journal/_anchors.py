"""Signed checkpoints of the journal's hash chain, kept OUTSIDE the journal (issue 10, defect 7).

The chain alone proves nothing against someone who can write the journal file: they can delete rows (the
newest, or any in the middle and re-chain everything after it), rewrite `meta.head` and the packages table,
and `audit verify` still passes, because the chain's head lives in the same file. An anchor fixes a head
where the file cannot reach it: an Ed25519 signature over (journal id, seq, head hash, wall time) made with a
key kept outside the journal, appended as one JSON line to a separate append-only anchors file and written
to the log. `legguard audit verify --anchors FILE [--public-key KEY]` then fails unless every anchored head is
still in the journal: row `seq` exists and has the anchored hash (the chain check covers every row before it).

What this does and does not detect is spelled out in docs/audit.md.

The engine anchors after start-up, every `journal.anchor_interval` seconds while rows are being written, and at
shutdown; each anchor first makes the journal durable up to the anchored head (one fsync'd commit), so a power
loss cannot leave an anchor pointing past what the journal kept.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ._store import Journal, JournalError, canonical_json, genesis_hash

log = logging.getLogger("legguard.engine.anchors")

ANCHOR_VERSION: Final = 1
_DOMAIN: Final = b"legguard-anchor-v1\n"  # signatures over anything else never verify as anchors
KEY_PREFIX: Final = "ed25519:"


class AnchorError(JournalError):
    """A key or anchors file cannot be used; the message names the file and what to do."""


# --- keys ---------------------------------------------------------------------------------------------


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The signing key at `path`, created (mode 0600, never overwritten) if absent. Refused if others may
    read it. The key itself is never printed, logged or journaled; only its public half is."""
    path = Path(path).expanduser()
    if not path.exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return load_key(path)  # created meanwhile by another process: use that one
        except OSError as exc:
            raise AnchorError(f"anchor key {str(path)!r}: cannot create it ({exc.strerror})") from None
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        log.info("anchor key created at %s (public key %s)", path, public_key_text(key.public_key()))
        return key
    return load_key(path)


def load_key(path: Path) -> Ed25519PrivateKey:
    path = Path(path).expanduser()
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as exc:
        raise AnchorError(f"anchor key {str(path)!r}: cannot read it ({exc.strerror})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AnchorError(
            f"anchor key {str(path)!r}: readable by others (mode {stat.S_IMODE(mode):04o}); run chmod 600 on it"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        # The content is not echoed: it is (or was meant to be) a private key.
        raise AnchorError(f"anchor key {str(path)!r}: not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise AnchorError(f"anchor key {str(path)!r}: not an Ed25519 key")
    return key


def public_key_text(key: Ed25519PublicKey) -> str:
    """`ed25519:<base64 of the 32 raw bytes>`: how anchors carry it and `--public-key` takes it."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return KEY_PREFIX + base64.b64encode(raw).decode()


def key_fingerprint(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def parse_public_key(value: str) -> Ed25519PublicKey:
    """`--public-key`: the `ed25519:...` text itself, or a file holding it (or a PEM public key)."""
    text = value.strip()
    if not text.startswith(KEY_PREFIX):
        path = Path(text).expanduser()
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise AnchorError(
                f"--public-key: {value!r} is neither an 'ed25519:...' key nor a readable file ({exc.strerror})"
            ) from None
        if data.lstrip().startswith(b"-----BEGIN PUBLIC KEY"):
            try:
                key = serialization.load_pem_public_key(data)
            except ValueError:
                raise AnchorError(f"--public-key: {value!r}: not a PEM public key") from None
            if not isinstance(key, Ed25519PublicKey):
                raise AnchorError(f"--public-key: {value!r}: not an Ed25519 key")
            return key
        text = data.decode(errors="replace").strip()
    try:
        raw = base64.b64decode(text.removeprefix(KEY_PREFIX), validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise AnchorError(f"--public-key: {value!r}: expected 'ed25519:' and 32 bytes in base64") from None


# --- anchors ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Anchor:
    journal_id: str
    seq: int
    head: str
    wall: float
    reason: str
    key: str  # public key text
    signature: str  # base64

    def signed_bytes(self) -> bytes:
        return _signed_bytes(self.journal_id, self.seq, self.head, self.wall, self.reason)

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": ANCHOR_VERSION,
            "journal_id": self.journal_id,
            "seq": self.seq,
            "head": self.head,
            "wall": self.wall,
            "at": _iso(self.wall),
            "reason": self.reason,
            "key": self.key,
            "sig": self.signature,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Anchor:
        if data.get("v") != ANCHOR_VERSION:
            raise ValueError(f"version {data.get('v')!r} is not {ANCHOR_VERSION}")
        seq = data["seq"]
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise ValueError(f"seq {seq!r} is not a row number")
        return cls(
            journal_id=str(data["journal_id"]),
            seq=seq,
            head=str(data["head"]),
            wall=float(data["wall"]),
            reason=str(data["reason"]),
            key=str(data["key"]),
            signature=str(data["sig"]),
        )

    def verifies_with(self, key: Ed25519PublicKey) -> bool:
        try:
            key.verify(base64.b64decode(self.signature, validate=True), self.signed_bytes())
        except (InvalidSignature, ValueError):
            return False
        return True


def _signed_bytes(journal_id: str, seq: int, head: str, wall: float, reason: str) -> bytes:
    body = {"journal_id": journal_id, "seq": seq, "head": head, "wall": wall, "reason": reason}
    return _DOMAIN + canonical_json(body).encode()


def _iso(wall: float) -> str:
    return dt.datetime.fromtimestamp(wall, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def default_anchors_path(db: Path) -> Path:
    return Path(f"{db}.anchors")


class Anchorer:
    """Writes signed anchors of one journal to one anchors file (the engine's side)."""

    def __init__(
        self,
        journal: Journal,
        key: Ed25519PrivateKey,
        path: Path,
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.journal = journal
        self._key = key
        self.path = Path(path)
        self.public_key = public_key_text(key.public_key())
        self._wall = wall_clock
        self.last: Anchor | None = None
        self.written = 0

    def __repr__(self) -> str:  # never the key
        return f"Anchorer(journal={self.journal.journal_id}, path={str(self.path)!r}, key={self.public_key})"

    def anchor(self, reason: str) -> Anchor | None:
        """Make the journal durable up to its head, sign that head and append it. None if the head is the one
        anchored last (nothing new to protect)."""
        seq, head = self.journal.sync()
        if self.last is not None and (self.last.seq, self.last.head) == (seq, head):
            return None
        wall = float(self._wall())
        journal_id = self.journal.journal_id
        signature = base64.b64encode(self._key.sign(_signed_bytes(journal_id, seq, head, wall, reason))).decode()
        anchor = Anchor(journal_id, seq, head, wall, reason, self.public_key, signature)
        line = json.dumps(anchor.to_dict(), sort_keys=True, separators=(",", ":")) + "\n"
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, line.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise AnchorError(f"anchors file {str(self.path)!r}: cannot append ({exc.strerror})") from None
        self.last = anchor
        self.written += 1
        # The log is a second copy of every anchor (ship it off the machine and a deleted anchors file, or
        # newest anchors deleted from it, no longer hide a truncation).
        log.info("journal anchor: %s", line.strip())
        return anchor


# --- verifying ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class AnchorCheck:
    path: str
    anchors: int = 0  # anchors of this journal in the file
    last: Anchor | None = None
    key: str | None = None  # the public key the signatures were checked with
    pinned: bool = False  # that key came from --public-key (else: from the anchors file itself)
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "path": self.path,
            "anchors": self.anchors,
            "last": None if self.last is None else self.last.to_dict(),
            "key": self.key,
            "key_pinned": self.pinned,
            "problem": self.problem,
        }

    def summary(self) -> str:
        if self.last is None:
            return f"anchors {self.path}: none"
        how = "pinned key" if self.pinned else "key from the anchors file (not pinned: pass --public-key)"
        return (
            f"{self.anchors} signed anchor(s) in {self.path}, last at seq {self.last.seq} "
            f"({_iso(self.last.wall)}); {how} {key_fingerprint(self.key or '')}"
        )


def verify_anchors(journal: Journal, path: Path, public_key: Ed25519PublicKey | None = None) -> AnchorCheck:
    """Every anchor of this journal in `path` must be signed by the key, and the journal must still hold each
    anchored head: row `seq` with exactly that hash (seq 0: the genesis hash). Stops at the first problem."""
    check = AnchorCheck(path=str(path))
    pinned = None if public_key is None else public_key_text(public_key)
    check.key, check.pinned = pinned, pinned is not None
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        check.problem = f"anchors file {str(path)!r}: cannot read it ({exc.strerror})"
        return check
    jid = journal.journal_id
    others: set[str] = set()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            anchor = Anchor.from_dict(json.loads(line))
        except (ValueError, KeyError, TypeError) as exc:
            check.problem = f"{where}: not an anchor ({exc}); the anchors file was edited"
            return check
        if anchor.journal_id != jid:
            others.add(anchor.journal_id)
            continue
        if check.key is None:
            check.key = anchor.key  # trust on first use: only as good as the file itself
        key = public_key if public_key is not None else _key_or_none(anchor.key)
        if anchor.key != check.key or key is None or not anchor.verifies_with(key):
            what = "the pinned key" if check.pinned else f"the key of the first anchor ({key_fingerprint(check.key)})"
            check.problem = f"{where}: anchor of seq {anchor.seq} is not signed by {what}: forged or edited"
            return check
        if check.last is not None and anchor.seq < check.last.seq:
            check.problem = f"{where}: anchor of seq {anchor.seq} follows one of seq {check.last.seq}: reordered"
            return check
        check.anchors += 1
        check.last = anchor
        problem = _head_problem(journal, anchor, where)
        if problem is not None:
            check.problem = problem
            return check
    if check.last is None:
        also = f" (it anchors journal(s) {', '.join(sorted(others))})" if others else ""
        check.problem = f"{path}: no anchor of journal {jid}{also}"
    return check


def _key_or_none(text: str) -> Ed25519PublicKey | None:
    try:
        return parse_public_key(text) if text.startswith(KEY_PREFIX) else None
    except AnchorError:
        return None


def _head_problem(journal: Journal, anchor: Anchor, where: str) -> str | None:
    jid = journal.journal_id
    when = f"anchored at {_iso(anchor.wall)} ({where})"
    if anchor.seq == 0:
        if anchor.head != genesis_hash(jid):
            return f"journal {jid}: anchor of seq 0 does not carry this journal's genesis hash ({when})"
        return None
    found = journal.hash_at(anchor.seq)
    if found is None:
        last = journal.last_seq()
        return (
            f"journal {jid} ends at seq {last} but seq {anchor.seq} was {when}: "
            f"rows after seq {last} were deleted (or the journal was replaced)"
        )
    if found != anchor.head:
        return (
            f"journal {jid} row {anchor.seq} has hash {found[:16]}… but was {when} as {anchor.head[:16]}…: "
            f"rows up to seq {anchor.seq} were rewritten, inserted or deleted"
        )
    return None
