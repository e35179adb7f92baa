"""A hostile Kafka endpoint: it speaks just enough of the wire protocol (ApiVersions, Metadata v0/v1)
for a real client (librdkafka, through confluent-kafka) to believe the metadata it sends.

It is an attacker, not a model of Kafka: it exists to answer what no real broker would, such as a
partition id of 2**31 - 1, so that a test can show recon refusing it. Everything else a client asks
gets no answer, and the client times out as it would against a broken broker.

Formats from the protocol guide (https://kafka.apache.org/protocol): request header v1/v2, response
header v0 (ApiVersions' response header is v0 at every version), ApiVersions v0-v3 (v3 flexible),
Metadata v0/v1.
"""

from __future__ import annotations

import socket
import socketserver
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager

API_VERSIONS = 18
METADATA = 3


def _str(s: str) -> bytes:
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _api_versions(version: int) -> bytes:
    """Advertise ApiVersions 0-3 and Metadata 0-1 only, so the client asks Metadata v1."""
    ranges = [(API_VERSIONS, 0, 3), (METADATA, 0, 1)]
    if version >= 3:
        body = struct.pack(">h", 0) + _uvarint(len(ranges) + 1)
        body += b"".join(struct.pack(">hhh", *r) + _uvarint(0) for r in ranges)
        return body + struct.pack(">i", 0) + _uvarint(0)
    body = struct.pack(">hi", 0, len(ranges)) + b"".join(struct.pack(">hhh", *r) for r in ranges)
    return body + (struct.pack(">i", 0) if version >= 1 else b"")


def _metadata(version: int, port: int, topic: str, partitions: list[int]) -> bytes:
    broker = struct.pack(">i", 0) + _str("127.0.0.1") + struct.pack(">i", port)
    if version >= 1:
        broker += struct.pack(">h", -1)  # rack: null
    body = struct.pack(">i", 1) + broker
    if version >= 1:
        body += struct.pack(">i", 0)  # controller id
    parts = b"".join(struct.pack(">hii", 0, p, 0) + struct.pack(">ii", 1, 0) + struct.pack(">ii", 1, 0)
                     for p in partitions)
    t = struct.pack(">h", 0) + _str(topic) + (b"\x00" if version >= 1 else b"")
    return body + struct.pack(">i", 1) + t + struct.pack(">i", len(partitions)) + parts


@contextmanager
def hostile_broker(topic: str, partitions: list[int]) -> Iterator[str]:
    """A listening endpoint on 127.0.0.1 that reports ``topic`` with ``partitions``; yields its
    bootstrap address and stops when the block ends."""

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            conn: socket.socket = self.request
            conn.settimeout(30)
            try:
                while True:
                    head = _read(conn, 4)
                    frame = _read(conn, struct.unpack(">i", head)[0])
                    key, version, corr = struct.unpack(">hhi", frame[:8])
                    if key == API_VERSIONS:
                        body = _api_versions(version if version <= 3 else 0)
                        if version > 3:  # KIP-511: too new, answer v0 with UNSUPPORTED_VERSION (35)
                            body = struct.pack(">h", 35) + body[2:]
                    elif key == METADATA and version <= 1:
                        body = _metadata(version, port, topic, partitions)
                    else:
                        continue  # never answered: the client times out
                    out = struct.pack(">i", corr) + body
                    conn.sendall(struct.pack(">i", len(out)) + out)
            except (OSError, EOFError, struct.error):
                return

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()


def _read(conn: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)
