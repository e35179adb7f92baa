"""Internals of the local Salesforce API server (see `engine.local.salesforce` for the public entry).

* `schema` — the org's sObjects, their describe metadata and storage types;
* `soql`   — the SOQL subset: lark grammar, validation against describe, translation to SQL;
* `store`  — the PostgreSQL store: tables, bulk loading, DML with field history, result sets;
* `tls`    — the CA, server certificate and JWT key pair the stack generates once;
* `auth`   — sessions and credential checks;
* `app`    — the Starlette application (REST, Bulk API 2.0, SOAP/OAuth login, control endpoints).
"""
