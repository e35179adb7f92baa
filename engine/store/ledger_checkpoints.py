"""The ledger's tree heads: RFC 6962 Merkle roots over the chain's row hashes, checkpoints, and
their C2SP signed-note form (writing one, and reading and checking one kept outside the database).

Apart from :mod:`engine.store.ledger` because none of it touches the database: it is the format a
checkpoint has outside it (a note, or the ``predicate.ledger`` of a signed manifest), which
standard tooling can recompute, and the hashing both the ledger and its verifier fold rows into.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.core.errors import UsageError, VerificationError


# -- RFC 6962 Merkle tree heads --------------------------------------------------------------------
def rfc6962_leaf(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def rfc6962_node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


EMPTY_ROOT = hashlib.sha256(b"").digest()


class MerkleAccumulator:
    """RFC 6962 tree head over a growing list, in O(log n) memory: a stack of perfect subtrees.

    The RFC splits n leaves at the largest power of two below n; folding the stack of perfect
    subtrees from the right gives exactly that shape.
    """

    def __init__(self) -> None:
        self._stack: list[tuple[int, bytes]] = []
        self.size = 0

    def append(self, data: bytes) -> None:
        h, height = rfc6962_leaf(data), 0
        while self._stack and self._stack[-1][0] == height:
            h = rfc6962_node(self._stack.pop()[1], h)
            height += 1
        self._stack.append((height, h))
        self.size += 1

    def root(self) -> bytes:
        if not self._stack:
            return EMPTY_ROOT
        acc = self._stack[-1][1]
        for _, h in reversed(self._stack[:-1]):
            acc = rfc6962_node(h, acc)
        return acc


def merkle_root(entries: Iterable[bytes]) -> bytes:
    """RFC 6962 Merkle Tree Hash (MTH) of a list of entries."""
    acc = MerkleAccumulator()
    for e in entries:
        acc.append(e)
    return acc.root()


# -- checkpoints and signed notes ------------------------------------------------------------------
@dataclass(frozen=True)
class Checkpoint:
    """A tree head: the first ``size`` rows of the chain have RFC 6962 root ``root``.

    seq: the ``checkpoints`` row written with it (None for one read from a file).
    """

    origin: str
    size: int
    root: bytes
    seq: int | None = None
    recorded_at: str | None = None

    def note_text(self) -> str:
        """The C2SP tlog-checkpoint body: origin, size, base64 root, each ending in a newline."""
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\n"

    def to_dict(self) -> dict[str, Any]:
        return {"origin": self.origin, "size": self.size, "root": self.root.hex(),
                "root_base64": base64.b64encode(self.root).decode(), "checkpoint_seq": self.seq,
                "recorded_at": self.recorded_at}


def _note_key_hash(name: str, public_raw: bytes) -> bytes:
    # signed-note key id: SHA-256(name || "\n" || 0x01 (Ed25519) || public key)[:4]
    return hashlib.sha256(name.encode() + b"\n" + b"\x01" + public_raw).digest()[:4]


def sign_note(cp: Checkpoint, signing_key: Path, key_name: str | None = None) -> str:
    """A C2SP signed note: the checkpoint text, a blank line, one ``— name base64(keyhash||sig)`` line."""
    from cryptography.hazmat.primitives import serialization

    from engine.evidence.manifest import load_private_key

    key = load_private_key(signing_key)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    name = key_name or cp.origin
    text = cp.note_text()
    sig = key.sign(text.encode())
    return text + "\n" + f"\u2014 {name} {base64.b64encode(_note_key_hash(name, raw) + sig).decode()}\n"


def read_note(path: Path, pubkey: Path | None) -> tuple[Checkpoint, bool]:
    """Parse an exported checkpoint; with ``pubkey`` its signature must verify. Returns (checkpoint,
    signature_checked)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization

    try:
        raw_text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"checkpoint file {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise VerificationError(f"checkpoint file {path} is unreadable: {exc}") from None
    text, sep, sigs = raw_text.partition("\n\n")
    lines = text.split("\n")
    if not sep or len(lines) < 3:
        raise VerificationError(f"checkpoint file {path} is not a signed checkpoint note (origin, size, root, "
                                "blank line, signatures)")
    try:
        size = int(lines[1])
        root = base64.b64decode(lines[2], validate=True)
    except ValueError:
        raise VerificationError(f"checkpoint file {path}: malformed size or root line") from None
    if size < 0 or len(root) != 32:
        raise VerificationError(f"checkpoint file {path}: malformed size or root line")
    cp = Checkpoint(origin=lines[0], size=size, root=root)
    if pubkey is None:
        return cp, False
    from engine.evidence.manifest import load_public_key

    pub = load_public_key(pubkey)
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    body = (text + "\n").encode()
    candidates = 0
    for line in sigs.splitlines():
        if not line.startswith("\u2014 "):
            continue
        parts = line[2:].split(" ")
        if len(parts) != 2:
            continue
        name, blob_text = parts
        try:
            blob = base64.b64decode(blob_text, validate=True)
        except ValueError:
            continue
        if len(blob) != 68 or blob[:4] != _note_key_hash(name, raw):
            continue
        candidates += 1
        try:
            pub.verify(blob[4:], body)
            return cp, True
        except InvalidSignature:
            pass
    if candidates:
        raise VerificationError(f"checkpoint file {path}: the signature does not verify with {pubkey}: "
                                "the checkpoint was altered after signing")
    raise VerificationError(f"checkpoint file {path} is not signed by the key in {pubkey}")


def read_checkpoint(path: Path, pubkey: Path | None) -> tuple[Checkpoint, bool]:
    """An exported checkpoint note, or a signed manifest (its ``predicate.ledger`` is a tree head
    signed with the manifest, so every manifest doubles as an external checkpoint)."""
    try:
        head = Path(path).read_bytes()[:1]
    except FileNotFoundError:
        raise UsageError(f"checkpoint file {path} not found") from None
    if head != b"{":
        return read_note(path, pubkey)
    from engine.evidence.manifest import load_public_key, open_envelope

    if pubkey is None:
        raise UsageError(f"{path} is a manifest: its signature must be checked first; give the signer's public key",
                         field="key")
    try:
        envelope = json.loads(Path(path).read_text())
    except ValueError:
        raise VerificationError(f"checkpoint file {path} is neither a checkpoint note nor a manifest") from None
    payload, _ = open_envelope(envelope, load_public_key(pubkey), where=f"manifest {Path(path).name}")
    led = (json.loads(payload).get("predicate") or {}).get("ledger")
    if not isinstance(led, dict) or "size" not in led or "root" not in led:
        raise UsageError(f"manifest {path} records no ledger checkpoint (its run was recorded without a ledger)")
    return Checkpoint(origin=str(led.get("origin")), size=int(led["size"]), root=bytes.fromhex(led["root"]),
                      seq=led.get("checkpoint_seq")), True
