"""Where the embedded stack keeps its files, and its generated credentials.

Secrets live in one mode-0600 JSON file (the contract's `credentials_file`) and never in the
non-secret endpoint file, logs or command output. They are generated once per state directory so
that a restarted stack keeps working with clients configured earlier.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_STATE_DIR = Path(".recon")


@dataclass(frozen=True)
class StackPaths:
    """File layout of one embedded stack (default `./.recon`)."""

    root: Path

    @classmethod
    def at(cls, root: str | os.PathLike[str] | None = None) -> StackPaths:
        base = Path(root) if root is not None else Path(os.environ.get("RECON_STATE_DIR", DEFAULT_STATE_DIR))
        return cls(base.resolve())

    @property
    def pg(self) -> Path:
        return self.root / "pg"

    @property
    def kafka(self) -> Path:
        return self.root / "kafka"

    @property
    def salesforce(self) -> Path:
        return self.root / "salesforce"

    @property
    def credentials_file(self) -> Path:
        return self.root / "credentials.json"

    @property
    def pgpass_file(self) -> Path:
        return self.root / "pgpass"

    @property
    def services_file(self) -> Path:
        return self.root / "services.json"


CREDENTIAL_KEYS = (
    "postgres_user",
    "postgres_password",
    "postgres_app_user",
    "postgres_app_password",
    "postgres_superuser",
    "postgres_superuser_password",
    "salesforce_username",
    "salesforce_password",
    "salesforce_security_token",
    "salesforce_consumer_key",
    "salesforce_consumer_secret",
)


def _write_private(path: Path, text: str) -> None:
    """Write a file readable by its owner only, created with that mode (no window where it is 0644)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def load_credentials(paths: StackPaths) -> dict[str, str]:
    """Read the stack's credentials, creating them on first use."""
    f = paths.credentials_file
    if f.exists():
        creds: dict[str, str] = json.loads(f.read_text())
        if all(k in creds for k in CREDENTIAL_KEYS):
            return creds
    else:
        creds = {}
    defaults = {
        "postgres_user": "recon",
        "postgres_app_user": "recon_app",
        "postgres_superuser": "postgres",
        "salesforce_username": "recon.integration@example.com",
        "salesforce_consumer_key": "3MVG9recon" + secrets.token_hex(16),
    }
    for key in CREDENTIAL_KEYS:
        if key not in creds:
            creds[key] = defaults.get(key) or secrets.token_urlsafe(18)
    creds["salesforce_security_token"] = creds["salesforce_security_token"].replace("-", "x")[:24]
    _write_private(f, json.dumps(creds, indent=2, sort_keys=True) + "\n")
    return creds


def write_pgpass(paths: StackPaths, host: str, port: int, creds: dict[str, str]) -> Path:
    """A libpq password file so that clients can connect with a DSN that holds no password."""
    lines = []
    for user_key, pw_key in (
        ("postgres_user", "postgres_password"),
        ("postgres_app_user", "postgres_app_password"),
        ("postgres_superuser", "postgres_superuser_password"),
    ):
        user, pw = creds[user_key], creds[pw_key].replace("\\", "\\\\").replace(":", "\\:")
        lines.append(f"{host}:{port}:*:{user}:{pw}")
    _write_private(paths.pgpass_file, "\n".join(lines) + "\n")
    return paths.pgpass_file


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the OS picks it)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_free(port: int) -> bool:
    """True when 127.0.0.1:port can be bound now (SO_REUSEADDR, as servers bind: TIME_WAIT is fine)."""
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie still answers kill(0); treat it as dead
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return True
