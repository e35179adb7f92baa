"""Sessions and credential checks of the local org.

Session ids look like Salesforce's (`<org id 15>!AQ…`) and are stateless: an HMAC over the user id,
an epoch and the issue time, with a secret kept in the state directory. They survive server
restarts (as real sessions survive a client reconnect) and are all revoked at once by bumping the
epoch (`POST /__recon/sessions/expire`), which is how tests provoke INVALID_SESSION_ID.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509

from engine.local.sfapi.schema import ORG_ID


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _secret_file(path: Path, nbytes: int = 32) -> bytes:
    if path.exists():
        return bytes.fromhex(path.read_text().strip())
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_bytes(nbytes)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value.hex())
    return value


class Sessions:
    """Issues and verifies session ids (access tokens)."""

    def __init__(self, directory: Path) -> None:
        self._key = _secret_file(directory / "session_secret")
        self._epoch_file = directory / "session_epoch"
        self.epoch = int(self._epoch_file.read_text()) if self._epoch_file.exists() else 0

    def issue(self, user_id: str) -> str:
        payload = f"{user_id}|{self.epoch}|{int(time.time())}|{secrets.token_hex(6)}".encode()
        sig = hmac.new(self._key, payload, hashlib.sha256).digest()[:24]
        return f"{ORG_ID[:15]}!AQ{_b64(payload)}.{_b64(sig)}"

    def verify(self, token: str) -> str | None:
        """The session's user id, or None when the token is malformed, forged or revoked."""
        prefix = f"{ORG_ID[:15]}!AQ"
        if not token.startswith(prefix) or "." not in token:
            return None
        body, _, sig = token[len(prefix):].partition(".")
        try:
            payload, given = _unb64(body), _unb64(sig)
        except ValueError:
            return None
        if not hmac.compare_digest(hmac.new(self._key, payload, hashlib.sha256).digest()[:24], given):
            return None
        try:
            user_id, epoch, _issued, _nonce = payload.decode().split("|")
        except ValueError:
            return None
        return user_id if int(epoch) == self.epoch else None

    def expire_all(self) -> None:
        self.epoch += 1
        self._epoch_file.write_text(str(self.epoch))

    def signature(self, text: str) -> str:
        """The `signature` of an OAuth token response (HMAC of id + issued_at, base64)."""
        return base64.b64encode(hmac.new(self._key, text.encode(), hashlib.sha256).digest()).decode()


@dataclass(frozen=True)
class Credentials:
    """What the org accepts: the integration user's password/token and the connected app's keys."""

    username: str
    password: str
    security_token: str
    consumer_key: str
    consumer_secret: str
    jwt_public_key: Any

    @classmethod
    def from_stack(cls, creds: dict[str, str], jwt_cert: Path) -> Credentials:
        cert = x509.load_pem_x509_certificate(jwt_cert.read_bytes())
        return cls(creds["salesforce_username"], creds["salesforce_password"], creds["salesforce_security_token"],
                   creds["salesforce_consumer_key"], creds["salesforce_consumer_secret"], cert.public_key())

    def check_user(self, username: str | None) -> bool:
        return username is not None and username.strip().lower() == self.username.lower()

    def check_password(self, username: str | None, password: str | None) -> bool:
        """Password, or password + security token (127.0.0.1 counts as a trusted IP range)."""
        if not self.check_user(username) or password is None:
            return False
        ok_plain = hmac.compare_digest(password.encode(), self.password.encode())
        ok_token = hmac.compare_digest(password.encode(), (self.password + self.security_token).encode())
        return ok_plain or ok_token

    def check_client(self, client_id: str | None, client_secret: str | None) -> str | None:
        """None when the connected app's id and secret match, else the OAuth error code."""
        if client_id is None or not hmac.compare_digest(client_id.encode(), self.consumer_key.encode()):
            return "invalid_client_id"
        if client_secret is None or not hmac.compare_digest(client_secret.encode(), self.consumer_secret.encode()):
            return "invalid_client"
        return None

    def verify_assertion(self, assertion: str, audiences: list[str]) -> tuple[str, str] | None:
        """Check an RS256 JWT bearer assertion; None when valid, else (error, error_description)."""
        try:
            # exp is checked below: simple-salesforce sends it as a string, which pyjwt would reject
            claims = jwt.decode(assertion, self.jwt_public_key, algorithms=["RS256"], audience=audiences,
                                options={"require": ["exp", "iss", "sub", "aud"], "verify_exp": False})
        except jwt.InvalidAudienceError:
            return ("invalid_grant", "audience is invalid")
        except jwt.PyJWTError:
            return ("invalid_grant", "invalid assertion")
        try:
            expires = float(claims["exp"])
        except (TypeError, ValueError):
            return ("invalid_grant", "invalid assertion")
        if expires + 5 < time.time():
            return ("invalid_grant", "expired access/refresh token")
        if claims.get("iss") != self.consumer_key:
            return ("invalid_client_id", "client identifier invalid")
        if not self.check_user(str(claims.get("sub"))):
            return ("invalid_grant", "user hasn't approved this consumer")
        return None
