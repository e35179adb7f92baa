"""`recon.toml` → typed, validated settings. Errors name the file, the key and the fix.

Secrets never live in the file: passwords and tokens come from the environment, or from files the
config *names* (`credentials_file` for Salesforce, `passfile` for libpq), which keeps the config
safe to commit and to embed (by digest) in manifests.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.core.errors import UsageError
from engine.core.tolerance import parse_tolerance

if TYPE_CHECKING:
    from engine.core.gate import LagThresholds

#: a Salesforce field's API name (what describe declares; checked again against describe before SOQL)
FIELD_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,79}$")


@dataclass(frozen=True)
class Roles:
    """Which Salesforce field (source name) plays which part in explain and repair:
    ``[mapping.NAME.roles]``. ``amount``: the gated money column (None: explain's ``--column``, else
    the gate column, else the diff's only compared column); ``owner`` / ``commission_rate`` /
    ``rank_by`` (what ranks the SEC-critical subset): defaults ``[commission] owner_field`` /
    ``rate_field`` / ``revenue_field``, else the names below; ``modstamp``: the last-change stamp."""

    amount: str | None = None
    owner: str = "OwnerId"
    commission_rate: str = "Commission_Rate__c"
    rank_by: str = "AnnualRevenue"
    modstamp: str = "SystemModstamp"


#: role → the [commission] key it falls back to
_ROLE_FALLBACK = {"owner": "owner_field", "commission_rate": "rate_field", "rank_by": "revenue_field"}


@dataclass(frozen=True)
class Mapping:
    """One reconciliation: source ↔ target, keys, compared columns, tolerances.

    key / columns: pairs (source column, target column).
    tolerance: absolute tolerance per source column.
    target_updated_at / source_updated_at: columns that say when a row last changed (for --as-of).
    gate_column: the amount column the circuit breaker watches.
    """

    name: str
    source: str
    target: str
    key: tuple[tuple[str, str], ...]
    columns: tuple[tuple[str, str], ...] = ()
    tolerance: dict[str, Decimal] = field(default_factory=dict)
    source_where: str | None = None
    target_where: str | None = None
    target_updated_at: str | None = None
    types: dict[str, str] = field(default_factory=dict)
    roles: Roles = field(default_factory=Roles)
    source_updated_at: str | None = None
    #: the incremental state directory of ``recon diff``/``recon watch`` (``--state`` wins)
    state: str | None = None


@dataclass(frozen=True)
class ReportSettings:
    """``[report]``: the currency amounts are shown in, and rates into it (:meth:`Config.report`)."""

    currency: str = "USD"
    rates: dict[str, Decimal] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    path: Path | None
    raw: dict[str, Any]
    digest: str

    def section(self, name: str) -> dict[str, Any]:
        v = self.raw.get(name, {})
        if not isinstance(v, dict):
            raise UsageError(f"{self.where}: [{name}] must be a table")
        return v

    @property
    def where(self) -> str:
        return str(self.path) if self.path else "configuration"

    def mapping(self, name: str) -> Mapping:
        maps = self.section("mapping")
        if name not in maps:
            known = ", ".join(sorted(maps)) or "none"
            raise UsageError(f"{self.where}: no [mapping.{name}] (known mappings: {known})")
        m = maps[name]
        where = f"{self.where}: [mapping.{name}]"
        for req in ("source", "target", "key"):
            if req not in m:
                raise UsageError(f"{where} needs '{req}'")
        tol = {}
        for k, v in (m.get("tolerance") or {}).items():
            try:
                tol[k] = parse_tolerance(v)
            except ValueError as exc:
                raise UsageError(f"{where}: tolerance.{k}: {exc}") from None
        return Mapping(
            name=name, source=_str(m, "source", where), target=_str(m, "target", where),
            key=tuple(parse_pair(x) for x in _list(m, "key", where)),
            columns=tuple(parse_pair(x) for x in _list(m, "columns", where)),
            tolerance=tol, source_where=m.get("source_where"), target_where=m.get("target_where"),
            target_updated_at=m.get("target_updated_at"), types=dict(m.get("types") or {}),
            roles=self.roles(name), source_updated_at=_opt_str(m, "source_updated_at", where),
            state=_opt_str(m, "state", where),
        )

    def roles(self, name: str | None) -> Roles:
        """``[mapping.NAME.roles]`` (roles win), else ``[commission]`` owner_field / rate_field /
        revenue_field, else :class:`Roles`' defaults. A name without a mapping gets the fallbacks."""
        m = self.section("mapping").get(name) if name else None
        raw = m.get("roles", {}) if isinstance(m, dict) else {}
        where = f"{self.where}: [mapping.{name}.roles]"
        if not isinstance(raw, dict):
            raise UsageError(f"{where} must be a table like {{ amount = \"Amount__c\" }}")
        known = tuple(Roles.__dataclass_fields__)
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise UsageError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(known)})")
        comm = self.section("commission")
        values: dict[str, str] = {}
        for role in known:
            if role in raw:
                v, at = raw[role], f"{where} {role}"
            elif role in _ROLE_FALLBACK and comm.get(_ROLE_FALLBACK[role]) is not None:
                v, at = comm[_ROLE_FALLBACK[role]], f"{self.where}: [commission] {_ROLE_FALLBACK[role]}"
            else:
                continue
            if not isinstance(v, str) or not FIELD_RE.match(v):
                raise UsageError(f"{at} = {v!r} is not a Salesforce field name: use the field's API name "
                                 "(a letter, then letters, digits or _, at most 80), e.g. \"OwnerId\"")
            values[role] = v
        return Roles(**values)

    def report(self) -> ReportSettings:
        """``[report]``: ``currency`` (ISO 4217, default USD) and ``rates``, a table of conversion
        rates into it for an org whose records carry their own currency (``CurrencyIsoCode``): units
        of the report currency per unit of each, as decimal strings, e.g. ``[report.rates]`` with
        ``EUR = "1.08"``."""
        from engine.core import currency as cur

        sect = self.section("report")
        unknown = sorted(set(sect) - {"currency", "rates"})
        if unknown:
            raise UsageError(f"{self.where}: [report] unknown key(s) {', '.join(unknown)} (known: currency, rates)")
        code = sect.get("currency", cur.DEFAULT)
        if not cur.is_code(code):
            raise UsageError(f"{self.where}: [report] currency = {code!r} is not an ISO 4217 currency code: "
                             "use three capitals, e.g. currency = \"EUR\"")
        raw = sect.get("rates", {})
        if not isinstance(raw, dict):
            raise UsageError(f"{self.where}: [report] rates must be a table like {{ EUR = \"1.08\" }}")
        rates: dict[str, Decimal] = {}
        for k, v in raw.items():
            r = cur.rate(v)
            if not cur.is_code(k) or r is None:
                raise UsageError(f"{self.where}: [report] rates.{k} = {v!r}: a rate is an ISO 4217 code and a "
                                 f"positive decimal string, units of {code} per unit of it, e.g. EUR = \"1.08\"")
            rates[k] = r
        return ReportSettings(code, rates)

    def lag(self, mapping: str) -> LagThresholds:
        """``[gate] NAME.lag_amount`` / ``lag_seconds`` / ``lag_offsets`` / ``lag_table`` (scalars of
        ``[gate]`` are defaults for every mapping, as for the ratios). ``lag_amount`` is a decimal
        string: a TOML float is binary, and a money limit is exact or it is not a limit."""
        from decimal import InvalidOperation

        from engine.core.gate import LagThresholds

        sect = self.section("gate")
        per = sect.get(mapping, {})
        merged = {**{k: v for k, v in sect.items() if not isinstance(v, dict)}, **(per if isinstance(per, dict) else {})}
        at = f"{self.where}: [gate] {mapping}"
        amount = merged.get("lag_amount")
        if amount is not None:
            try:
                parsed = Decimal(amount.strip()) if isinstance(amount, str) and amount.strip() else None
            except InvalidOperation:
                parsed = None
            if parsed is None or not parsed.is_finite() or parsed < 0:
                raise UsageError(f"{at}.lag_amount = {amount!r} must be a decimal string >= 0, e.g. "
                                 "lag_amount = \"10000.00\" (quoted: a TOML number is not exact)")
            amount = parsed
        seconds = merged.get("lag_seconds")
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                                    or not 0 <= seconds < float("inf")):
            raise UsageError(f"{at}.lag_seconds = {seconds!r} must be a number of seconds >= 0, e.g. lag_seconds = 300")
        offsets = merged.get("lag_offsets", "kafka")
        if offsets not in ("kafka", "postgres"):
            raise UsageError(f"{at}.lag_offsets = {offsets!r} must be \"kafka\" (the group's committed offsets) "
                             "or \"postgres\" (the offsets `recon consume` stores)")
        table = merged.get("lag_table")
        if table is not None and (not isinstance(table, str) or not table):
            raise UsageError(f"{at}.lag_table = {table!r} must be the events table of `recon consume --table`, "
                             "e.g. lag_table = \"warehouse.clv_events\"")
        if offsets == "postgres" and table is None:
            raise UsageError(f"{at}: lag_offsets = \"postgres\" needs lag_table, the events table of "
                             "`recon consume --table` (its _offsets table holds the stored offsets)")
        return LagThresholds(amount=amount, seconds=None if seconds is None else float(seconds), offsets=offsets,
                             table=table)

    def pg_passfile(self) -> Path | None:
        """The password file to give each PostgreSQL connection (libpq's ``passfile`` parameter):
        the one `[postgres] passfile` names, unless PGPASSWORD or PGPASSFILE is set (the environment
        wins, as everywhere; libpq reads those itself, and then ~/.pgpass). Passed per connection,
        never put into ``os.environ``: a library call must not change its caller's process."""
        pf = self.path_value("postgres", "passfile")
        if pf and "PGPASSFILE" not in os.environ and "PGPASSWORD" not in os.environ:
            return pf
        return None

    def pg_statement_timeout_ms(self) -> int | None:
        """The ``statement_timeout`` of every PostgreSQL read, in milliseconds: ``[postgres]
        statement_timeout`` in seconds (0: none); None when unset (the reader's default, 30
        minutes). A read that takes longer ends with exit 2 instead of holding its snapshot (and
        the server's old row versions) open."""
        v = self.section("postgres").get("statement_timeout")
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or v > 2_000_000:
            raise UsageError(f"{self.where}: [postgres] statement_timeout = {v!r} must be a number of seconds "
                             "(0 for no limit), e.g. statement_timeout = 600")
        return int(v * 1000)

    def path_value(self, section: str, key: str) -> Path | None:
        """A file path from the config, relative to the config file's directory."""
        v = self.section(section).get(key)
        if not v:
            return None
        p = Path(os.path.expanduser(str(v)))
        return p if p.is_absolute() or self.path is None else (self.path.parent / p)


def _str(m: dict, k: str, where: str) -> str:
    v = m.get(k)
    if not isinstance(v, str) or not v:
        raise UsageError(f"{where}: '{k}' must be a non-empty string")
    return v


def _list(m: dict, k: str, where: str) -> list[str]:
    v = m.get(k, [])
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise UsageError(f"{where}: '{k}' must be a list of strings like \"Id=account_id\"")
    return v


def parse_pair(text: str) -> tuple[str, str]:
    """`SRC=TGT` or `NAME` (same name on both sides)."""
    if "=" in text:
        a, b = text.split("=", 1)
        if not a or not b:
            raise UsageError(f"malformed column pair {text!r}: use SRC=TGT or NAME")
        return a.strip(), b.strip()
    if not text.strip():
        raise UsageError("empty column name")
    return text.strip(), text.strip()


def load(path: str | os.PathLike[str] | None) -> Config:
    if path is None:
        return Config(None, {}, hashlib.sha256(b"").hexdigest())
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"config file {p} not found: pass -C PATH or run `recon scenario load` to write one") from None
    try:
        import tomllib  # here, not at import: its regexes cost ~40 ms at every start

        raw = tomllib.loads(data.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{p}: not valid TOML: {exc}") from None
    for forbidden in ("password", "token", "secret", "security_token", "consumer_secret"):
        for sect, body in raw.items():
            if isinstance(body, dict) and forbidden in body:
                raise UsageError(f"{p}: [{sect}] {forbidden} must not be in the config file: set it in the "
                                 "environment or in a file the config names (credentials_file, passfile)")
    kafka = raw.get("kafka")
    if isinstance(kafka, dict):
        for name in _flat_keys(kafka):
            if is_secret_kafka_property(name):
                raise UsageError(f"{p}: [kafka] {name!r} is a credential and must not be in the config file: "
                                 "put it in a librdkafka properties file and pass --kafka-config FILE")
    return Config(p.resolve(), raw, hashlib.sha256(data).hexdigest())


#: librdkafka properties that hold a credential (librdkafka's CONFIGURATION.md; it marks these
#: sensitive), ``ssl_key`` (confluent-kafka's Python-only private key object) and the Java clients'
#: ``sasl.jaas.config`` (someone will copy it over). ``sasl.oauthbearer.config`` is free-form and
#: carries SASL extensions and unsecured-JWT settings, so it counts as one.
SECRET_KAFKA_PROPERTIES = frozenset({
    "sasl.password", "ssl.key.password", "ssl.keystore.password", "ssl.key.pem", "ssl_key",
    "sasl.oauthbearer.client.secret", "sasl.oauthbearer.client.credentials.client.secret",
    "sasl.oauthbearer.assertion.private.key.passphrase", "sasl.oauthbearer.assertion.private.key.pem",
    "sasl.oauthbearer.config", "sasl.jaas.config",
})
#: words that make a property a credential when its last dotted part holds one (``*.password``,
#: ``*.secret``, a passphrase or token a newer librdkafka adds); ``sasl.oauthbearer.token.endpoint.url``
#: stays allowed: its last part is a URL
_SECRET_WORDS = ("password", "passwd", "secret", "token", "passphrase")


def is_secret_kafka_property(name: str) -> bool:
    """Whether a librdkafka property holds a credential, which belongs in a ``--kafka-config`` file
    only: the config file is meant to be committed and its digest signed into manifests."""
    key = name.strip().lower()
    last = key.rsplit(".", 1)[-1]
    return (key in SECRET_KAFKA_PROPERTIES or key.endswith("key.pem")
            or any(w in last for w in _SECRET_WORDS))


def _flat_keys(table: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted names of a TOML table's leaves: ``sasl.password = "x"`` without quotes is the
    nested table ``{sasl = {password = "x"}}`` in TOML, and must be caught just the same."""
    out: list[str] = []
    for k, v in table.items():
        name = f"{prefix}{k}"
        out += _flat_keys(v, name + ".") if isinstance(v, dict) else [name]
    return out


def _opt_str(m: dict, k: str, where: str) -> str | None:
    v = m.get(k)
    if v is None:
        return None
    if not isinstance(v, str) or not v or "\x00" in v:
        raise UsageError(f"{where}: '{k}' must be a non-empty string")
    return v
