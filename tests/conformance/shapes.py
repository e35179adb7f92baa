"""Compare a local API answer with an example published in Salesforce's developer guides.

The examples (``examples/*.json``, each naming the guide, page and section it comes from) were
taken in other orgs and API versions, so ids, dates, counts and version numbers differ by design.
What must match is the structure: the keys, the JSON type of every value, the format of dates, ids
and resource paths, and the few values that are the same in every org (``done``, ``state``,
``errorCode`` …, listed per example under ``equal``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

EXAMPLES = Path(__file__).parent / "examples"

SF_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}\+0000$")
SF_ID18 = re.compile(r"^[0-9A-Za-z]{18}$")
KEY_PREFIXES = {"005", "01g", "750"}  # users, query locators, Bulk jobs (record ids vary with the object queried)
DATA_PATH = re.compile(r"^/services/data/v\d+\.\d/")


def example(name: str) -> dict[str, Any]:
    """One stored example (``examples/<name>.json``)."""
    return dict(json.loads((EXAMPLES / f"{name}.json").read_text()))


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    return {int: "integer", float: "number", str: "string", list: "array", dict: "object"}.get(type(v), type(v).__name__)


def path_template(p: str) -> str:
    """A resource path with the version, ids and offsets taken out: what stays is its structure."""
    p = re.sub(r"/v\d+\.\d/", "/vXX.X/", p)
    p = re.sub(r"/sobjects/\w+", "/sobjects/{SOBJECT}", p)
    p = re.sub(r"(?<![0-9A-Za-z])[0-9A-Za-z]{18}(?![0-9A-Za-z])", "{ID}", p)
    return re.sub(r"-\d+$", "-{N}", p)


def problems(doc: Any, got: Any, *, exact_keys: bool = False, at: str = "$") -> list[str]:
    """Where ``got`` differs in structure from the published ``doc`` (empty when it conforms).

    ``exact_keys``: every object must have exactly the example's keys (else: at least them)."""
    if _kind(doc) != _kind(got):
        return [f"{at}: {_kind(got)} {got!r:.60} where the example has {_kind(doc)} {doc!r:.60}"]
    out: list[str] = []
    if isinstance(doc, dict):
        missing = sorted(set(doc) - set(got))
        if missing:
            out.append(f"{at}: missing keys {missing}")
        extra = sorted(set(got) - set(doc))
        if exact_keys and extra:
            out.append(f"{at}: keys the example does not have {extra}")
        for k in doc:
            if k in got:
                out += problems(doc[k], got[k], exact_keys=exact_keys, at=f"{at}.{k}")
    elif isinstance(doc, list) and doc:
        for i, item in enumerate(got):
            out += problems(doc[0], item, exact_keys=exact_keys, at=f"{at}[{i}]")
    elif isinstance(doc, str):
        if SF_DATETIME.match(doc) and not SF_DATETIME.match(got):
            out.append(f"{at}: {got!r} is not a REST dateTime like {doc!r}")
        if SF_ID18.match(doc):
            if not SF_ID18.match(got):
                out.append(f"{at}: {got!r} is not an 18-character id like {doc!r}")
            elif doc[:3] in KEY_PREFIXES and got[:3] != doc[:3]:
                out.append(f"{at}: {got!r} does not have the key prefix {doc[:3]!r}")
        if DATA_PATH.match(doc) and path_template(got) != path_template(doc):
            out.append(f"{at}: {got!r} is not a path like {doc!r} ({path_template(got)} != {path_template(doc)})")
    return out


def unequal(doc: dict[str, Any], got: dict[str, Any], keys: list[str]) -> list[str]:
    """The listed keys whose values are the same in every org but differ here."""
    return [f"{k}: {got.get(k)!r} != {doc[k]!r}" for k in keys if got.get(k) != doc[k]]


def media_type(content_type: str) -> tuple[str, str | None]:
    """``application/json;charset=UTF-8`` → ``("application/json", "utf-8")``."""
    parts = [p.strip() for p in content_type.split(";")]
    charset = next((p.split("=", 1)[1].strip().lower() for p in parts[1:] if p.lower().startswith("charset=")), None)
    return parts[0].lower(), charset
