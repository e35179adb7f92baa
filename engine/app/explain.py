"""`recon explain`: a diff's differences, explained from the Kafka stream and priced.

Reads the diff's output directory, scans the topic, fetches from Salesforce only what pricing needs
for the mismatched records (the fields of the mapping's roles — owner, commission rate, rank_by,
modstamp, amount: an Id-list re-extraction, never the whole object) plus the SEC-critical ids (top
by rank_by), and writes
`explain.json` and `findings.parquet`. Like diff, gate and repair it records its run (the ledger, a
signed manifest over its outputs, OpenLineage events) through :mod:`engine.app.evidence`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl

from engine import workspace
from engine.app.evidence import EvidenceOptions
from engine.config import Config
from engine.connectors.base import SalesforceRef, parse_reference
from engine.connectors.kafka import scan as kafka_source
from engine.connectors.kafka.client import load_kafka_config
from engine.core import causes, forensics
from engine.core.errors import Exit, UsageError


@dataclass(frozen=True)
class ExplainRequest:
    """diff_dir: output of `recon diff --out`. column: the amount column (source name); default the
    mapping's ``roles.amount``, else its gate column, else the diff's only compared column."""

    diff_dir: Path
    bootstrap: str | None = None
    topic: str | None = None
    column: str | None = None
    kafka_config: dict[str, str] | None = field(default=None, repr=False)  # may hold SASL secrets
    #: a librdkafka properties file; its properties override ``kafka_config`` and the config's [kafka]
    kafka_config_file: Path | None = None
    fields: kafka_source.EventFields = kafka_source.EventFields()
    window: kafka_source.Window = kafka_source.Window()
    #: where to write explain.json and findings.parquet (with a manifest and no out_dir: next to it)
    out_dir: Path | None = None
    evidence: EvidenceOptions = EvidenceOptions()
    #: ``--key PUB``: verify the diff directory by the manifest signed in it (else the ledger)
    pubkey: Path | None = None
    #: the warehouse's consumer group (``--group``, else ``[kafka] group``): whose commit history
    #: gives the root-cause evidence of rewinds and rebalances
    group: str | None = None
    #: explain only these keys' differences (`recon watch`: the differences new since its previous
    #: cycle, so a standing difference is not priced and fetched again every cycle); None: all
    only_keys: tuple[str, ...] | None = None

    def check(self) -> None:
        """Usage errors, before the config is read or anything is scanned."""
        self.evidence.check()


def _commission(config: Config) -> tuple[Decimal, float]:
    c = config.section("commission")
    try:
        rate = Decimal(str(c.get("default_rate", "0.05")))
        frac = float(c.get("sec_top_fraction", 0.05))
    except (ArithmeticError, ValueError):
        raise UsageError(f"{config.where}: [commission] default_rate and sec_top_fraction must be numbers") from None
    if not 0 < frac <= 1:
        raise UsageError(f"{config.where}: [commission] sec_top_fraction must be in (0, 1]")
    return rate, frac


def run_explain(req: ExplainRequest, config: Config, progress: Any = None) -> tuple[forensics.Explanation, forensics.Audit]:
    """The explanation and the audit it rests on; writes nothing (:func:`run` writes and records)."""
    exp, audit, _ = _explain(req, config, progress)
    return exp, audit


def _explain(req: ExplainRequest, config: Config, progress: Any = None
             ) -> tuple[forensics.Explanation, forensics.Audit, list[tuple[str, dict[str, Any]]]]:
    """:func:`run_explain`, plus what it read, as (side, metadata) for the evidence."""
    say = progress or (lambda _m: None)
    from engine.app.reconcile import read_outputs

    file_props = load_kafka_config(req.kafka_config_file)

    from engine.app.trust import TrustOptions, verify

    verified = verify(req.diff_dir, workspace.DiffOutput(Path(req.diff_dir)).files(), command="diff",
                      trust=TrustOptions(req.evidence.ledger_dsn(config), req.pubkey, config.pg_passfile()))
    diff_summary, _, diffs_path = read_outputs(req.diff_dir)
    differences = pl.read_parquet(diffs_path)
    if req.only_keys is not None:
        differences = differences.filter(pl.col("key").is_in(pl.Series(req.only_keys, dtype=pl.Utf8)))
    roles = config.roles(diff_summary.get("mapping"))
    column = req.column or roles.amount or _pick_column(diff_summary, config)
    kcfg = config.section("kafka")
    bootstrap = req.bootstrap or kcfg.get("bootstrap")
    topic = req.topic or kcfg.get("topic")
    if not bootstrap or not topic:
        raise UsageError("no Kafka topic: pass --bootstrap and --topic, or set [kafka] bootstrap and topic in the config")
    group = req.group or (str(kcfg["group"]) if kcfg.get("group") else None)
    extra = {k: str(v) for k, v in kcfg.items() if k not in ("bootstrap", "topic", "group")}
    extra.update(req.kafka_config or {})
    extra.update(file_props)
    src_ref = diff_summary.get("source", {}).get("ref", "")
    ref = parse_reference(src_ref) if src_ref else None
    if not isinstance(ref, SalesforceRef):
        raise UsageError("explain needs a diff whose source is Salesforce (salesforce:OBJECT)")
    from engine.connectors.salesforce import source as sf_extract

    conn = sf_extract.connection(config)
    say(f"scanning {topic}")
    rc = stream_causes(bootstrap, topic, group, req.window, req.fields, extra, org_id=conn.org_id)
    audit, attribution, evidence, raw, isolation = rc.audit, rc.attribution, rc.evidence, rc.raw, rc.isolation
    stream = forensics.recompute(audit, attribution.redelivered)
    rate, frac = _commission(config)
    keys = salesforce_keys(differences)
    say(f"fetching owners and commission rates of {len(keys):,} records from Salesforce")
    # field → the neutral name forensics reads it under (a field playing two roles is read once)
    by_role = {"owner": roles.owner, "commission_rate": roles.commission_rate, "rank_by": roles.rank_by,
               "modstamp": roles.modstamp, "amount": column}
    # a multi-currency org: each record's amounts are in its own currency; the report converts or refuses
    multi_currency = CURRENCY_FIELD in sf_extract.describe_columns(ref, config)
    if multi_currency:
        by_role["currency"] = CURRENCY_FIELD
    cols = list(dict.fromkeys(["Id", *by_role.values()]))
    sf_meta: dict[str, Any] = {"system": "salesforce", "object": ref.sobject, "org_id": conn.org_id,
                               "instance_url": conn.instance_url, "api_version": conn.api_version, "rows": 0}
    if keys:
        ex = sf_extract.extract(ref, config, cols, None, ids=keys)
        attrs, sf_meta = ex.frame, ex.meta
    else:
        attrs = pl.DataFrame(schema={c: pl.Utf8 for c in cols})
    attrs = _by_role(attrs, by_role)
    sec = set(sf_extract.top_ids(ref, config, roles.rank_by, frac))
    scale = _scale(diff_summary, column)
    exp = forensics.triangulate(differences, column, stream, attrs, sec_ids=sec, default_rate=rate, scale=scale)
    if multi_currency:
        exp = with_currency(exp, attrs)
    owners = owner_ids(exp.findings)
    if owners:
        say(f"fetching the names of {len(owners):,} owners from Salesforce")
    owner_names = sf_extract.user_names(config, owners) if owners else {}
    exp.summary.update({
        "diff": str(req.diff_dir),
        "mapping": diff_summary.get("mapping"),
        # how the diff this rests on was verified ("unverified": nothing to check it against)
        "verification": verified.to_dict(),
        "column": column,
        # with only_keys: how many keys explain was restricted to (the rest were explained before)
        "only_keys": None if req.only_keys is None else len(req.only_keys),
        "sec_top_fraction": frac,
        "sec_critical_accounts": len(sec),
        "kafka": {"bootstrap": bootstrap, "topic": topic, "events": audit.events, "duplicates": audit.duplicates,
                  "duplicate_records": audit.duplicate_records, "conflicts": audit.conflicts,
                  "windows": attribution.windows,
                  "partitions": {str(k): v for k, v in sorted(audit.partitions.items())},
                  # root cause: events the warehouse's group read twice although the topic holds them
                  # once (rewinds, rebalances), deliveries per cause, and what the evidence covers
                  "redeliveries": attribution.redelivered.height,
                  "redelivery_windows": attribution.redelivery_windows,
                  "causes": attribution.totals,
                  "group": group,
                  # how the scan read the topic: as the warehouse's consumer reads it (see scan_isolation)
                  "isolation_level": isolation,
                  # a read_committed read stops at an open transaction: its offsets are undecided, not aborted
                  "open_transaction": raw["open_transaction"],
                  "history_coverage": evidence.history_coverage},
        "salesforce": {"org_id": conn.org_id, "instance_url": conn.instance_url, "api_version": conn.api_version},
        # owner Id → User Name, fetched here once so that the report (which reads only verified
        # artefacts, offline) can name them; an owner missing here is shown by Id
        "owners": owner_names,
    })
    if multi_currency:
        exp.summary["currency_field"] = CURRENCY_FIELD
    window = {"from": req.window.start.isoformat() if req.window.start else None,
              "to": req.window.end.isoformat() if req.window.end else None}
    read = [("diff", {"system": "parquet", "path": str(diffs_path)}),
            ("stream", {"system": "kafka", "bootstrap": bootstrap, "topic": topic, "partitions": len(audit.partitions),
                        "events": audit.events, **window, "group": group,
                        # where the root-cause evidence lies in Kafka (kind, topic, partition, offsets)
                        "root_cause": attribution.ranges}),
            ("source", {"system": "salesforce", **sf_meta})]
    return exp, audit, read


@dataclass(frozen=True)
class StreamCauses:
    """The topic's audit and every excess delivery's causes: what explain reads from Kafka."""

    audit: forensics.Audit
    attribution: causes.Attribution
    evidence: causes.Evidence
    #: the evidence as read (``open_transaction`` included), in kafka-audit's JSON shapes
    raw: dict[str, Any]
    #: the isolation level of the scan (:func:`scan_isolation`)
    isolation: str


def stream_causes(bootstrap: str, topic: str, group: str | None, window: kafka_source.Window,
                  fields: kafka_source.EventFields, kafka_config: dict[str, str], *, org_id: str | None
                  ) -> StreamCauses:
    """Scan the topic (as :func:`scan_isolation` says), audit it, read the root-cause evidence and
    attribute each excess delivery: the Kafka half of explain, apart from Salesforce and the diff."""
    isolation = scan_isolation(group, kafka_config)
    scan = kafka_source.scan(bootstrap, topic, window, fields, kafka_config={**kafka_config, "isolation.level": isolation})
    audit = forensics.audit(scan, org_id=org_id)
    raw = _root_cause_evidence(bootstrap, topic, group, audit, kafka_config, window)
    evidence = causes.Evidence.from_dict(raw)
    return StreamCauses(audit, causes.attribute(audit.frame, audit.windows, evidence, topic), evidence, raw, isolation)


def scan_isolation(group: str | None, kafka_config: dict[str, str]) -> str:
    """The isolation level explain scans the topic with: the user's ``isolation.level`` when set,
    else ``read_uncommitted`` when a group is given, else librdkafka's default ``read_committed``.

    With a group, explain looks for why the warehouse's consumer applied events twice, so it reads
    the topic as that consumer may have: a ``read_committed`` scan never sees an aborted
    transaction's messages, and the copies a ``read_uncommitted`` warehouse consumer applied from
    one would be invisible (their retry would look like the only copy). A topic without aborted
    transactions reads the same either way, so the numbers of such a topic do not change. A
    warehouse that reads ``read_committed`` never applied aborted messages: set
    ``isolation.level = "read_committed"`` in [kafka] (or --kafka-config) and explain reads so."""
    if "isolation.level" in kafka_config:
        return str(kafka_config["isolation.level"])
    return "read_uncommitted" if group else "read_committed"


def _root_cause_evidence(bootstrap: str, topic: str, group: str | None, audit: forensics.Audit,
                         kafka_config: dict[str, str], window: kafka_source.Window | None = None) -> dict[str, Any]:
    """The root-cause evidence in the shapes of `recon kafka-audit --group G --isolation-check
    --json`: ``rewinds``, ``rebalances`` and ``history_coverage`` from the group's records in
    ``__consumer_offsets`` (read read_committed, never joining the group), ``aborted`` and
    ``open_transaction`` from a read_committed vs read_uncommitted read of the window, ``producers``
    from the record batches. The one place explain asks Kafka for them.

    Without a group, none of this is read (``history_coverage`` None: every delivery the topic's
    own evidence does not explain is ``unknown``), and producer ids come from the events'
    ``producer-id`` headers (marked ``source: "header"``: the producer's own claim). With a group,
    the record batches' producer ids replace the headers; a partition whose batches gave none
    (message format v0/v1 carries no producer id) keeps its header runs, so marked."""
    headers = causes.producers_from_headers(audit.frame)
    ev: dict[str, Any] = {"group": group, "rewinds": [], "rebalances": [], "history_coverage": None,
                          "aborted": [], "open_transaction": [], "producers": headers}
    if group:
        from engine.app.audit import isolation_evidence
        from engine.connectors.kafka import offsets_topic
        from engine.core import group_audit

        records, part = offsets_topic.read_group(bootstrap, group, kafka_config)
        g = group_audit.audit(records, topic, offsets_partition=part)
        ev.update(rewinds=g.rewinds, rebalances=g.rebalances, history_coverage=g.history_coverage)
        iso = isolation_evidence(bootstrap, topic, window or kafka_source.Window(), kafka_config)
        from_batches = {int(r["partition"]) for r in iso["producers"]}
        ev.update(aborted=iso["aborted"], open_transaction=iso["open_transaction"],
                  producers=[*iso["producers"], *(r for r in headers if int(r["partition"]) not in from_batches)])
    return ev


#: the field of a multi-currency Salesforce org that holds each record's currency
CURRENCY_FIELD = "CurrencyIsoCode"


def with_currency(exp: forensics.Explanation, attrs: pl.DataFrame) -> forensics.Explanation:
    """The findings with each record's currency (``currency``, from ``attrs``' column of that name),
    which findings.parquet then carries for the report."""
    cur = attrs.select("Id", pl.col("currency").cast(pl.Utf8)).unique("Id", keep="first")
    return forensics.Explanation(findings=exp.findings.join(cur, on="Id", how="left"), summary=exp.summary)


def owner_ids(findings: pl.DataFrame) -> list[str]:
    """The distinct owners of the findings (nulls left out), sorted."""
    if "owner_id" not in findings.columns:
        return []
    return sorted(str(o) for o in findings["owner_id"].drop_nulls().unique().to_list())


#: the kinds of difference whose key is a Salesforce record (read from Salesforce by the diff)
SALESFORCE_KINDS = ("mismatched", "duplicate_key", "missing_in_target")


def salesforce_keys(differences: pl.DataFrame) -> list[str]:
    """The keys explain may ask Salesforce about: those the diff read from Salesforce. A key only the
    warehouse holds (``missing_in_source``) is an arbitrary warehouse value, so it never goes into a
    query (forensics has nothing to fetch for it either); the rest are still checked as ids by the
    extraction."""
    return differences.filter(pl.col("kind").is_in(SALESFORCE_KINDS))["key"].unique().sort().to_list()


def _by_role(attrs: pl.DataFrame, by_role: dict[str, str]) -> pl.DataFrame:
    """The extracted fields under the neutral names of :data:`forensics.ATTRIBUTES` (field names
    matched case-insensitively, as describe does)."""
    names = {c.lower(): c for c in attrs.columns}
    return attrs.select(pl.col(names.get("id", "Id")).alias("Id"),
                        *(pl.col(names.get(f.lower(), f)).alias(role) for role, f in by_role.items()))


def _pick_column(diff_summary: dict[str, Any], config: Config) -> str:
    mapping = diff_summary.get("mapping")
    gate = config.section("gate").get(mapping or "", {}) if mapping else {}
    if isinstance(gate, dict) and gate.get("column"):
        return str(gate["column"])
    cols = list(diff_summary.get("compared_columns", {}))
    if len(cols) == 1:
        return cols[0]
    raise UsageError(f"the diff compared several columns ({', '.join(cols)}): pass --column NAME")


def _scale(diff_summary: dict[str, Any], column: str) -> int:
    t = diff_summary.get("compared_columns", {}).get(column, "")
    if t.startswith("decimal(") and t.endswith(")"):
        return int(t[8:-1])
    return 2


def write_outputs(exp: forensics.Explanation, out: Path) -> dict[str, Path]:
    return workspace.ExplainOutput(out).write(exp.summary, forensics.findings_for_parquet(exp.findings))


# -- the use case: `recon explain` ----------------------------------------------------------------
@dataclass
class ExplainOutcome:
    """One `recon explain`: ``document`` is what ``--json`` prints (the summary, and what was
    recorded as evidence), ``files`` the outputs written."""

    explanation: forensics.Explanation
    files: list[Path]
    out_dir: Path | None
    document: dict[str, Any]

    @property
    def exit_code(self) -> int:
        """1 when there are findings, else 0."""
        return int(Exit.FINDINGS if self.explanation.summary["records"] else Exit.OK)


def run(req: ExplainRequest, config: Config, *, progress: Any = None) -> ExplainOutcome:
    """Explain, write the outputs (``out_dir``, else next to the manifest), record the evidence
    (ledger run, signed manifest, OpenLineage events) when a ledger or a manifest is given."""
    from engine.app import evidence as ev
    from engine.evidence.manifest import describe_input

    req.check()
    passfile = config.pg_passfile()
    ledger_dsn = req.evidence.ledger_dsn(config)
    manifest = req.evidence.manifest
    exp, _, read = _explain(req, config, progress)
    where = req.out_dir or (manifest.parent if manifest is not None else None)
    files = list(write_outputs(exp, where).values()) if where is not None else []
    doc = dict(exp.summary)
    if ledger_dsn or manifest:
        inputs = [describe_input(side, meta) for side, meta in read]
        doc["evidence"] = ev.record_evidence(
            "explain", exp.summary, inputs, files, ledger_dsn=ledger_dsn, manifest_path=manifest,
            signing_key=req.evidence.signing_key, config_digest=config.digest, passfile=passfile)
    return ExplainOutcome(exp, files, where, doc)
