"""Dataset references of the contract (``salesforce:``, ``postgresql://…#schema.table``,
``parquet:``, ``csv:``), parsed without importing any data library: the CLI reads them before the
heavy imports, so a PostgreSQL read can start while Polars and Arrow are still loading."""

from __future__ import annotations

import re
from dataclasses import dataclass

from engine.core.errors import UsageError


@dataclass(frozen=True)
class SalesforceRef:
    sobject: str

    def __str__(self) -> str:
        return f"salesforce:{self.sobject}"


@dataclass(frozen=True)
class PostgresRef:
    dsn: str
    schema: str
    table: str

    def __str__(self) -> str:
        return f"{redact_dsn(self.dsn)}#{self.schema}.{self.table}"


@dataclass(frozen=True)
class FileRef:
    format: str  # "parquet" | "csv"
    path: str

    def __str__(self) -> str:
        return f"{self.format}:{self.path}"


Reference = SalesforceRef | PostgresRef | FileRef
_SOBJECT = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_IDENT = re.compile(r'^(?:"[^"]+"|[^."\s]+)$')


def parse_reference(text: str) -> Reference:
    """Parse a dataset reference of the contract (salesforce:, postgresql://…#schema.table, parquet:, csv:)."""
    if text.startswith("salesforce:"):
        name = text.split(":", 1)[1]
        if not _SOBJECT.match(name):
            raise UsageError(f"malformed reference {text!r}: expected salesforce:<sObject>, e.g. salesforce:Account")
        return SalesforceRef(name)
    if text.startswith(("postgresql://", "postgres://")):
        if "#" not in text:
            raise UsageError(f"malformed reference {redact_dsn(text)!r}: add the table as a fragment, "
                             "e.g. postgresql://user@host:5432/db#schema.table")
        dsn, frag = text.rsplit("#", 1)
        parts = _split_ident(frag)
        if parts is None:
            raise UsageError(f"malformed table {frag!r} in reference: expected schema.table or table")
        schema, table = parts if len(parts) == 2 else ("public", parts[0])
        return PostgresRef(dsn, schema, table)
    for fmt in ("parquet", "csv"):
        if text.startswith(fmt + ":"):
            path = text.split(":", 1)[1]
            if not path:
                raise UsageError(f"malformed reference {text!r}: expected {fmt}:PATH")
            return FileRef(fmt, path)
    raise UsageError(f"malformed reference {redact_dsn(text)!r}: use salesforce:OBJECT, "
                     "postgresql://user@host:port/db#schema.table, parquet:PATH or csv:PATH")


def _split_ident(frag: str) -> list[str] | None:
    parts = re.findall(r'"[^"]+"|[^.]+', frag)
    if not parts or len(parts) > 2 or ".".join(parts) != frag or not all(_IDENT.match(p) for p in parts):
        return None
    return [p[1:-1] if p.startswith('"') else p for p in parts]


#: libpq settings whose values are credentials; any other setting whose name carries one of the
#: words below is treated as one too, so an option a newer libpq adds does not leak unnoticed
_SECRET_KEYS = frozenset({"password", "sslpassword", "oauth_client_secret"})
_SECRET_WORDS = ("password", "secret", "token")
UNPARSABLE = "<unparsable DSN>"


def redact_dsn(dsn: str) -> str:
    """A DSN without its credentials, safe for messages, manifests and the ledger.

    Redacted from what libpq itself parses (``conninfo_to_dict``), so percent-encoded keys
    (``?pass%77ord=``), quoted and escaped values and ``sslpassword`` are caught exactly as libpq
    would send them; the result is rebuilt from the remaining settings (a URI stays a URI). A
    ``#schema.table`` suffix (a dataset reference) is kept. A string libpq cannot parse cannot be
    redacted reliably, so it is replaced as a whole (unless it has nothing a password could hide in).
    """
    head, frag = _split_fragment(dsn)
    parsed = _parse(head)
    if parsed is None or _ambiguous_userinfo(head):
        return dsn if not ("=" in dsn or "@" in dsn or "://" in dsn) else UNPARSABLE + frag
    safe = {k: v for k, v in parsed.items() if not _is_secret_key(k)}
    scheme = head.split("://", 1)[0] if "://" in head else None
    return (_as_uri(scheme, safe) if scheme else _as_keywords(safe)) + frag


def _is_secret_key(key: str) -> bool:
    return key in _SECRET_KEYS or any(w in key.lower() for w in _SECRET_WORDS)


def secret_keys(dsn: str) -> list[str]:
    """The connection parameters of ``dsn`` that carry a secret (``password``, ``sslpassword``,
    ``oauth_client_secret``…), by libpq's own parse; [] for a DSN libpq rejects."""
    return [k for k in (_parse(dsn) or {}) if _is_secret_key(k)]


def _parse(text: str) -> dict[str, str] | None:
    """libpq's reading of a conninfo string (keyword or URI form); None when libpq rejects it."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        return {k: str(v) for k, v in conninfo_to_dict(text).items()}
    except Exception:  # noqa: BLE001 - psycopg raises ProgrammingError, or others for odd bytes
        return None


def _split_fragment(text: str) -> tuple[str, str]:
    """``(dsn, "#schema.table")`` when the text ends in a table reference recon appended. libpq
    reads a ``#`` as part of a value, so the split is trusted only where libpq put the fragment at
    the end of a setting that is not a secret (the database name of a URI); a ``#`` inside a
    password (``password='a#b'``, ``u:p#w@``) stays part of the DSN and is redacted with it."""
    if "#" not in text:
        return text, ""
    head, frag = text.rsplit("#", 1)
    if _split_ident(frag) is None:
        return text, ""
    whole = _parse(text)
    if whole is None:
        return head, "#" + frag
    if any(not _is_secret_key(k) and v.endswith("#" + frag) for k, v in whole.items()):
        return head, "#" + frag
    return text, ""


def _ambiguous_userinfo(text: str) -> bool:
    """A URI whose authority holds more than one ``@`` (an unencoded ``@`` in a password): libpq
    splits at the first, so part of the password would be shown as the host."""
    if "://" not in text:
        return False
    rest = text.split("://", 1)[1]
    authority = rest.split("/", 1)[0].split("?", 1)[0]
    return authority.count("@") > 1


def _as_keywords(settings: dict[str, str]) -> str:
    from psycopg.conninfo import make_conninfo

    return make_conninfo("", **settings)


def _as_uri(scheme: str, settings: dict[str, str]) -> str:
    """A libpq URI of ``settings``; hosts that are socket directories, and host/port lists that do
    not pair up, go into the query string where libpq reads them just the same."""
    from urllib.parse import quote, urlencode

    rest = dict(settings)
    user, dbname = rest.pop("user", None), rest.pop("dbname", None)
    hosts = rest.get("host", "").split(",") if "host" in rest else []
    ports = rest.get("port", "").split(",") if "port" in rest else []
    authority = ""
    if hosts and not any(h.startswith(("/", "@")) for h in hosts) and len(ports) in (0, len(hosts)):
        pairs = zip(hosts, ports or [""] * len(hosts), strict=True)
        authority = ",".join((f"[{h}]" if ":" in h else quote(h, safe="")) + (f":{quote(p, safe='')}" if p else "")
                             for h, p in pairs)
        rest.pop("host", None)
        rest.pop("port", None)
    if user:
        authority = f"{quote(user, safe='')}@{authority}"
    out = f"{scheme}://{authority}"
    if dbname:
        out += "/" + quote(dbname, safe="")
    if rest:
        out += "?" + urlencode(rest, quote_via=quote, safe="/")
    return out
