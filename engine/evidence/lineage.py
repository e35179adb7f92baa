"""OpenLineage run events (START, then COMPLETE or FAIL) for every run that produces results.

Events are built from the openlineage-python client's own model classes and emitted through its
client, so a lineage backend (Marquez, DataHub, …) reads them as it reads any other producer's.
They are always written to a directory as well, one file per event whose bytes are exactly what an
HTTP backend receives: OpenLineage has no integrity facet, so the signed manifest lists each
event's SHA-256 instead (:class:`EmittedEvent`). HTTP delivery is best effort: a backend that is
down is reported, never fatal, because the file, the ledger and the manifest are the evidence.

The client is configured explicitly (no environment-variable facet, no git source-code facet):
otherwise a YAML file or ``OPENLINEAGE__*`` variable could copy environment values — secrets among
them — into the events.

Dataset naming follows the OpenLineage naming conventions: PostgreSQL ``postgres://host:port`` /
``database.schema.table``; files ``file`` / absolute path; Kafka ``kafka://bootstrap`` / topic;
Salesforce (no convention yet) ``salesforce://instance-host`` / sObject.
"""

from __future__ import annotations

import hashlib
import re
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args, get_origin, get_type_hints

from engine import __version__

if TYPE_CHECKING:
    from openlineage.client.event_v2 import RunEvent

    from engine.app.reconcile import DiffRun

PRODUCER = f"https://recon.dev/recon/{__version__}"
DEFAULT_NAMESPACE = "recon"


# -- what a run read and wrote ---------------------------------------------------------------------
@dataclass
class DatasetSpec:
    """One input or output dataset and what we know about it.

    fields: (column, type) pairs for the schema facet.
    null_counts: column → NULL count (dataQualityMetrics.columnMetrics.nullCount).
    assertions: (assertion, success, column or None) for dataQualityAssertions.
    column_lineage: output column → [(namespace, name, field, transformation type, subtype)].
    """

    namespace: str
    name: str
    fields: list[tuple[str, str]] = field(default_factory=list)
    source_uri: str | None = None
    row_count: int | None = None
    size_bytes: int | None = None
    null_counts: dict[str, int] = field(default_factory=dict)
    assertions: list[tuple[str, bool, str | None]] = field(default_factory=list)
    column_lineage: dict[str, list[tuple[str, str, str, str, str]]] = field(default_factory=dict)


@dataclass
class LineageSpec:
    """A run's job and datasets (the same in its START and its terminal event)."""

    job_name: str
    namespace: str = DEFAULT_NAMESPACE
    inputs: list[DatasetSpec] = field(default_factory=list)
    outputs: list[DatasetSpec] = field(default_factory=list)


@dataclass(frozen=True)
class EmittedEvent:
    """One emitted event: its type, the file holding it (if any) and the SHA-256 of its bytes."""

    event_type: str
    run_id: str
    sha256: str
    path: Path | None = None
    http_delivered: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"eventType": self.event_type, "runId": self.run_id, "sha256": self.sha256,
                "path": str(self.path) if self.path else None, "http_delivered": self.http_delivered}


@dataclass(frozen=True)
class HttpSettings:
    """An HTTP lineage backend; the API key comes from the environment, never from a file."""

    url: str
    endpoint: str = "api/v1/lineage"
    api_key: str | None = None
    timeout: float = 5.0


def http_settings(config_section: dict[str, Any] | None = None) -> HttpSettings | None:
    """``[openlineage] url/endpoint`` from the config, else the standard ``OPENLINEAGE_URL`` /
    ``OPENLINEAGE_ENDPOINT`` variables; the key only from ``OPENLINEAGE_API_KEY``."""
    import os

    sect = config_section or {}
    url = sect.get("url") or os.environ.get("OPENLINEAGE_URL")
    if not url:
        return None
    return HttpSettings(url=str(url), endpoint=str(sect.get("endpoint") or os.environ.get("OPENLINEAGE_ENDPOINT")
                                                  or "api/v1/lineage"),
                        api_key=os.environ.get("OPENLINEAGE_API_KEY") or None,
                        timeout=float(sect.get("timeout") or 5.0))


def dataset_for_input(inp: dict[str, Any]) -> DatasetSpec:
    """Namespace and name of an input described by ``engine.evidence.manifest.describe_input``,
    as its system's connector names it."""
    from engine.connectors.registry import connector_class

    system = inp.get("system")
    rows = inp.get("rows") if isinstance(inp.get("rows"), int) else None
    conn = connector_class(str(system)) if system else None
    if conn is not None:
        ns, name = conn.lineage_dataset(inp)
        return DatasetSpec(ns, name, source_uri=ns, row_count=rows)
    return DatasetSpec(str(system or "unknown"), str(inp.get("object", "")), row_count=rows)


def dataset_for_file(path: Path, rows: int | None = None) -> DatasetSpec:
    p = Path(path).resolve()
    return DatasetSpec("file", str(p), source_uri="file", row_count=rows,
                       size_bytes=p.stat().st_size if p.exists() else None)


def spec_from_inputs(command: str, inputs: list[dict[str, Any]], outputs: list[Path], *,
                     job_name: str | None = None, namespace: str = DEFAULT_NAMESPACE) -> LineageSpec:
    """A generic spec for any command: datasets only, no column-level facets."""
    return LineageSpec(job_name=job_name or command, namespace=namespace,
                       inputs=[dataset_for_input(i) for i in inputs],
                       outputs=[dataset_for_file(o) for o in outputs])


def spec_from_diff(run: DiffRun, inputs: list[dict[str, Any]], outputs: list[Path], *,
                   namespace: str = DEFAULT_NAMESPACE) -> LineageSpec:
    """The diff's datasets with schema, data-quality metrics and assertions from its result, and
    column lineage from the mapping into ``differences.parquet``."""
    summary = run.result.summary()
    src, tgt = dataset_for_input(inputs[0]), dataset_for_input(inputs[1])
    pairs = {a.lower(): b for a, b in (*run.request.keys, *run.request.columns)}
    s_fields = list(run.fields)
    for ds, side, name_of in ((src, "source", lambda f: f.column),
                              (tgt, "target", lambda f: pairs.get(f.column.lower(), f.column))):
        ds.fields = [(name_of(f), f.ctype.describe()) for f in s_fields]
        rows, nulls = run.profile(side)
        ds.row_count = rows
        ds.null_counts = {name_of(f): nulls[f.name] for f in s_fields if f.name in nulls}
    checks = [("no_missing_in_target", summary["missing_in_target"] == 0, None),
              ("no_missing_in_source", summary["missing_in_source"] == 0, None),
              ("no_mismatched_rows", summary["mismatched"] == 0, None),
              ("unique_key", summary["duplicate_keys"]["target"] == 0, None)]
    for f in s_fields:
        col = summary["columns"].get(f.name)
        if col is not None:
            checks.append(("column_matches_source", col["mismatched"] == 0, pairs.get(f.column.lower(), f.column)))
    tgt.assertions = checks
    src.assertions = [("unique_key", summary["duplicate_keys"]["source"] == 0, None)]
    outs = []
    for o in outputs:
        ds = dataset_for_file(o)
        if Path(o).name == "differences.parquet":
            ds.row_count = run.result.differences.height
            ds.fields = [("key", "text"), ("kind", "text"), ("column", "text"), ("source_value", "text"),
                         ("target_value", "text")]
            keys = [f for f in s_fields if f.is_key]
            vals = [f for f in s_fields if not f.is_key]
            t_name = {f.name: pairs.get(f.column.lower(), f.column) for f in s_fields}
            ds.column_lineage = {
                "key": [(src.namespace, src.name, f.column, "DIRECT", "TRANSFORMATION") for f in keys]
                + [(tgt.namespace, tgt.name, t_name[f.name], "DIRECT", "TRANSFORMATION") for f in keys],
                "source_value": [(src.namespace, src.name, f.column, "DIRECT", "TRANSFORMATION") for f in vals],
                "target_value": [(tgt.namespace, tgt.name, t_name[f.name], "DIRECT", "TRANSFORMATION") for f in vals],
                "kind": [(src.namespace, src.name, f.column, "INDIRECT", "FILTER") for f in s_fields]
                + [(tgt.namespace, tgt.name, t_name[f.name], "INDIRECT", "FILTER") for f in s_fields],
            }
        outs.append(ds)
    job = f"diff.{run.request.mapping}" if run.request.mapping else "diff"
    return LineageSpec(job_name=job, namespace=namespace, inputs=[src, tgt], outputs=outs)


# -- events ----------------------------------------------------------------------------------------
def new_run_id() -> str:
    """A UUIDv7 (time-ordered), as OpenLineage recommends for run ids."""
    from openlineage.client.uuid import generate_new_uuid

    return str(generate_new_uuid())


def _iso(t: datetime) -> str:
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).astimezone(UTC).isoformat(timespec="microseconds")


def build_event(spec: LineageSpec, event_type: str, run_id: str, event_time: datetime, *,
                error: str | None = None, with_results: bool = True) -> RunEvent:
    """One RunEvent; ``with_results`` adds the datasets' metrics, assertions and output statistics
    (known only once the run finished, so START carries the schema and sources only)."""
    from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
    from openlineage.client.facet_v2 import (
        column_lineage_dataset,
        data_quality_assertions_dataset,
        data_quality_metrics_input_dataset,
        datasource_dataset,
        error_message_run,
        job_type_job,
        output_statistics_output_dataset,
        processing_engine_run,
        schema_dataset,
    )

    def facets(ds: DatasetSpec) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if ds.fields:
            out["schema"] = schema_dataset.SchemaDatasetFacet(
                fields=[schema_dataset.SchemaDatasetFacetFields(name=n, type=t) for n, t in ds.fields],
                producer=PRODUCER)
        if ds.source_uri:
            out["dataSource"] = datasource_dataset.DatasourceDatasetFacet(name=ds.namespace, uri=ds.source_uri,
                                                                          producer=PRODUCER)
        if ds.column_lineage and with_results:
            out["columnLineage"] = column_lineage_dataset.ColumnLineageDatasetFacet(
                fields={col: column_lineage_dataset.Fields(inputFields=[
                    column_lineage_dataset.InputField(namespace=ns, name=nm, field=fd, transformations=[
                        column_lineage_dataset.Transformation(type=tt, subtype=st)])
                    for ns, nm, fd, tt, st in srcs]) for col, srcs in ds.column_lineage.items()},
                producer=PRODUCER)
        return out

    inputs = []
    for ds in spec.inputs:
        input_facets: dict[str, Any] = {}
        if with_results and (ds.row_count is not None or ds.null_counts):
            input_facets["dataQualityMetrics"] = data_quality_metrics_input_dataset.DataQualityMetricsInputDatasetFacet(
                rowCount=ds.row_count, bytes=ds.size_bytes,
                columnMetrics={c: data_quality_metrics_input_dataset.ColumnMetrics(nullCount=n)
                               for c, n in ds.null_counts.items()},
                producer=PRODUCER)
        if with_results and ds.assertions:
            input_facets["dataQualityAssertions"] = data_quality_assertions_dataset.DataQualityAssertionsDatasetFacet(
                assertions=[data_quality_assertions_dataset.Assertion(assertion=a, success=ok, column=c)
                            for a, ok, c in ds.assertions], producer=PRODUCER)
        inputs.append(InputDataset(namespace=ds.namespace, name=ds.name, facets=facets(ds),
                                   inputFacets=input_facets))
    outputs = []
    for ds in spec.outputs:
        output_facets: dict[str, Any] = {}
        if with_results and (ds.row_count is not None or ds.size_bytes is not None):
            output_facets["outputStatistics"] = output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
                rowCount=ds.row_count, size=ds.size_bytes, producer=PRODUCER)
        outputs.append(OutputDataset(namespace=ds.namespace, name=ds.name, facets=facets(ds),
                                     outputFacets=output_facets))
    run_facets: dict[str, Any] = {
        "processing_engine": processing_engine_run.ProcessingEngineRunFacet(
            version=__version__, name="recon", openlineageAdapterVersion=_client_version(), producer=PRODUCER),
    }
    if error is not None:
        run_facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
            message=error, programmingLanguage="PYTHON", producer=PRODUCER)
    job_facets = {"jobType": job_type_job.JobTypeJobFacet(processingType="BATCH", integration="RECON",
                                                          jobType="JOB", producer=PRODUCER)}
    return RunEvent(eventType=RunState(event_type), eventTime=_iso(event_time), producer=PRODUCER,
                    run=Run(runId=run_id, facets=run_facets),
                    job=Job(namespace=spec.namespace, name=spec.job_name, facets=job_facets),
                    inputs=inputs, outputs=outputs)


def _client_version() -> str:
    from openlineage.client.constants import __version__ as v

    return str(v)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:80]


def emit(events: list[RunEvent], *, directory: Path | None, http: HttpSettings | None = None) -> list[EmittedEvent]:
    """Emit through the OpenLineage client to files in ``directory`` (and to ``http`` when set)."""
    from openlineage.client import OpenLineageClient
    from openlineage.client.serde import Serde
    from openlineage.client.transport import Transport

    http_transport = None
    if http is not None:
        from openlineage.client.transport.http import HttpConfig, HttpTransport

        auth = {"type": "api_key", "apiKey": http.api_key} if http.api_key else {}
        http_transport = HttpTransport(HttpConfig.from_dict({
            "url": http.url, "endpoint": http.endpoint, "timeout": http.timeout, "auth": auth,
            "retry": {"total": 2, "backoff_factor": 0.2, "status_forcelist": [500, 502, 503, 504]}}))
    if directory is not None:
        Path(directory).mkdir(parents=True, exist_ok=True)
    emitted: list[EmittedEvent] = []

    class EvidenceTransport(Transport):
        """Serialise once; the file and the HTTP body are the same bytes, and we keep their digest."""

        kind = "recon-evidence"

        def emit(self, event: Any) -> None:
            text = Serde.to_json(event)
            data = text.encode()
            digest = hashlib.sha256(data).hexdigest()
            run_id, etype = event.run.runId, event.eventType.value
            path = None
            if directory is not None:
                path = Path(directory) / f"{_safe(event.job.name)}-{run_id}-{etype}.json"
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_bytes(data)
                tmp.replace(path)
            delivered = None
            if http_transport is not None:
                try:
                    resp = http_transport.emit(event)
                    delivered = resp is None or getattr(resp, "ok", True)
                except Exception as exc:  # noqa: BLE001 - a lineage backend being down must not fail the run
                    delivered = False
                    sys.stderr.write(f"recon: warning: OpenLineage backend at {http.url if http else ''} did not "
                                     f"accept the {etype} event: {type(exc).__name__}\n")
            emitted.append(EmittedEvent(etype, run_id, digest, path, delivered))

    client = OpenLineageClient(transport=EvidenceTransport(), config={
        "transport": {"type": "console"},
        "facets": {"environment_variables": [], "source_code_location": {"disabled": True}}})
    for e in events:
        client.emit(e)
    return emitted


# -- reading events back ---------------------------------------------------------------------------
def _facet_classes() -> dict[str, dict[str, type]]:
    from openlineage.client.facet_v2 import (
        column_lineage_dataset,
        data_quality_assertions_dataset,
        data_quality_metrics_input_dataset,
        datasource_dataset,
        error_message_run,
        job_type_job,
        nominal_time_run,
        output_statistics_output_dataset,
        parent_run,
        processing_engine_run,
        schema_dataset,
        source_code_location_job,
        tags_job,
        tags_run,
    )

    return {
        "run": {"processing_engine": processing_engine_run.ProcessingEngineRunFacet,
                "errorMessage": error_message_run.ErrorMessageRunFacet,
                "nominalTime": nominal_time_run.NominalTimeRunFacet,
                "parent": parent_run.ParentRunFacet, "tags": tags_run.TagsRunFacet},
        "job": {"jobType": job_type_job.JobTypeJobFacet, "tags": tags_job.TagsJobFacet,
                "sourceCodeLocation": source_code_location_job.SourceCodeLocationJobFacet},
        "dataset": {"schema": schema_dataset.SchemaDatasetFacet,
                    "dataSource": datasource_dataset.DatasourceDatasetFacet,
                    "columnLineage": column_lineage_dataset.ColumnLineageDatasetFacet},
        "input": {"dataQualityMetrics": data_quality_metrics_input_dataset.DataQualityMetricsInputDatasetFacet,
                  "dataQualityAssertions": data_quality_assertions_dataset.DataQualityAssertionsDatasetFacet},
        "output": {"outputStatistics": output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet},
    }


def _structure(tp: Any, value: Any) -> Any:
    """Rebuild attrs model objects from JSON following the classes' own type hints."""
    import enum
    import types
    import typing

    import attr

    if value is None:
        return None
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in get_args(tp) if a is not type(None)]
        for a in options:
            if isinstance(value, dict) and (attr.has(a) or get_origin(a) is dict):
                return _structure(a, value)
            if isinstance(value, list) and get_origin(a) is list:
                return _structure(a, value)
        return _structure(options[0], value) if options else value
    if origin is list:
        (item,) = get_args(tp)
        return [_structure(item, v) for v in value]
    if origin is dict:
        _, val = get_args(tp)
        return {k: _structure(val, v) for k, v in value.items()}
    if isinstance(tp, type) and attr.has(tp):
        hints = get_type_hints(tp)
        kwargs = {}
        known = set()
        for a in attr.fields(tp):
            known.add(a.name)
            if not a.init or a.name not in value:
                continue
            kwargs[a.alias] = _structure(hints.get(a.name, Any), value[a.name])
        obj = tp(**kwargs)
        extra = {k: v for k, v in value.items() if k not in known}
        if extra and hasattr(obj, "with_additional_properties"):
            obj = obj.with_additional_properties(**extra)
        return obj
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(value)
    return value


def event_from_dict(data: dict[str, Any]) -> RunEvent:
    """A RunEvent rebuilt from its JSON with the client's model classes (facets by their key)."""
    from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
    from openlineage.client.generated.base import BaseFacet

    classes = _facet_classes()

    def facets(kind: str, d: dict[str, Any] | None) -> dict[str, Any]:
        out = {}
        for k, v in (d or {}).items():
            cls = classes[kind].get(k)
            if cls is None:
                base = BaseFacet(producer=v.get("_producer", ""))
                out[k] = base.with_additional_properties(**{x: y for x, y in v.items() if not x.startswith("_")})
            else:
                out[k] = _structure(cls, v)
        return out

    def dataset(cls: type, d: dict[str, Any], extra_kind: str, extra_key: str) -> Any:
        kw = {"namespace": d["namespace"], "name": d["name"], "facets": facets("dataset", d.get("facets"))}
        kw[extra_key] = facets(extra_kind, d.get(extra_key))
        return cls(**kw)

    ev = RunEvent(
        eventType=RunState(data["eventType"]) if data.get("eventType") else None,
        eventTime=data["eventTime"], producer=data["producer"],
        run=Run(runId=data["run"]["runId"], facets=facets("run", data["run"].get("facets"))),
        job=Job(namespace=data["job"]["namespace"], name=data["job"]["name"],
                facets=facets("job", data["job"].get("facets"))),
        inputs=[dataset(InputDataset, d, "input", "inputFacets") for d in data.get("inputs") or []],
        outputs=[dataset(OutputDataset, d, "output", "outputFacets") for d in data.get("outputs") or []],
    )
    return ev


def run_events(spec: LineageSpec, run_id: str, started_at: datetime, finished_at: datetime, *,
               status: str = "COMPLETE", error: str | None = None) -> list[RunEvent]:
    """The START and the terminal (COMPLETE or FAIL) event of one run."""
    if status not in ("COMPLETE", "FAIL", "ABORT"):
        raise ValueError(f"terminal event type must be COMPLETE, FAIL or ABORT, not {status}")
    return [build_event(spec, "START", run_id, started_at, with_results=False),
            build_event(spec, status, run_id, finished_at, error=error, with_results=status == "COMPLETE")]
