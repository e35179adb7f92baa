"""The local org's sObjects: field metadata (what `describe` returns) and how each field is stored.

One definition drives everything else: the PostgreSQL DDL, the describe JSON, SOQL validation
(field names, filterable/sortable, literal types) and value formatting for REST JSON and Bulk CSV.
Field names are the canonical API names; SOQL lookups are case-insensitive through `SObject.field`.

`Commission_Rate__c` is a Number(1, 4) field (describe type `double`, precision 5, scale 4) that holds
a *fraction*: 0.0500 means 5 %. A Salesforce `percent` field would hold 5.0 for the same rate, which
makes "CLV × rate" ambiguous; a fraction in a plain number field cannot be misread.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any

from engine.core.sfid import to18

# Fixed identities of the local org: deterministic so that event ids, fixtures and ledgers computed
# in one run stay valid in the next. The pod part (`8d0000`) differs from `sfid.make_ids`' default
# (`5g0000`) so generated record ids can never collide with them.
ORG_ID = to18("00D8d00000RECON")
USER_ID = to18("0058d00000RECON")
ORG_NAME = "recon local org"
INTEGRATION_USER_NAME = "Recon Integration"

TEXT_TYPES = frozenset({"string", "picklist", "textarea", "email", "phone", "url", "combobox", "multipicklist"})
ID_TYPES = frozenset({"id", "reference"})
NUMERIC_TYPES = frozenset({"currency", "double", "percent"})
INT_TYPES = frozenset({"int", "long"})

_SOAP_TYPES = {
    "id": "tns:ID", "reference": "tns:ID", "boolean": "xsd:boolean", "currency": "xsd:double",
    "double": "xsd:double", "percent": "xsd:double", "int": "xsd:int", "long": "xsd:long",
    "date": "xsd:date", "datetime": "xsd:dateTime", "anyType": "xsd:anyType",
}

# DataType column of <Object>History rows, per field type (as Salesforce writes them)
_HISTORY_TYPES = {
    "currency": "Currency", "double": "Double", "percent": "Percent", "int": "Double", "picklist": "DynamicEnum",
    "reference": "EntityId", "boolean": "Boolean", "date": "Date", "datetime": "DateTime",
}


@dataclass(frozen=True)
class FieldDef:
    """One field: its describe metadata plus what the store needs (history tracking, defaults)."""

    name: str
    type: str
    label: str
    length: int = 0
    precision: int = 0
    scale: int = 0
    digits: int = 0
    nillable: bool = True
    custom: bool = False
    reference_to: tuple[str, ...] = ()
    relationship_name: str | None = None
    createable: bool = True
    updateable: bool = True
    filterable: bool = True
    sortable: bool = True
    unique: bool = False
    name_field: bool = False
    picklist: tuple[str, ...] = ()
    tracked: bool = False
    history_field: str | None = None  # value of History.Field (Salesforce renames some, e.g. Owner)
    system: bool = False  # maintained by the server (audit fields)

    @property
    def sql_type(self) -> str:
        t = self.type
        if t in ID_TYPES or t in TEXT_TYPES or t == "anyType":
            return 'text COLLATE "C"'
        if t == "boolean":
            return "boolean"
        if t in NUMERIC_TYPES:
            return f"numeric({self.precision},{self.scale})"
        if t == "int":
            return "integer"
        if t == "long":
            return "bigint"
        if t == "date":
            return "date"
        if t == "datetime":
            return "timestamp(3) with time zone"
        raise ValueError(f"no storage type for field type {t}")

    @property
    def soap_type(self) -> str:
        return _SOAP_TYPES.get(self.type, "xsd:string")

    @property
    def history_type(self) -> str:
        return _HISTORY_TYPES.get(self.type, "Text")

    @property
    def is_text(self) -> bool:
        return self.type in TEXT_TYPES

    def describe(self) -> dict[str, Any]:
        """The field's entry in `sobjects/{name}/describe` (the keys clients read, with real shapes)."""
        byte_length = self.length * 3 if self.type in TEXT_TYPES or self.type in ID_TYPES else 0
        return {
            "aggregatable": self.type not in ("anyType", "textarea"),
            "autoNumber": False,
            "byteLength": byte_length,
            "calculated": False,
            "caseSensitive": False,
            "createable": self.createable,
            "custom": self.custom,
            "defaultValue": None,
            "defaultedOnCreate": self.system or self.type == "boolean" or self.name == "OwnerId",
            "deprecatedAndHidden": False,
            "digits": self.digits,
            "externalId": False,
            "filterable": self.filterable,
            "groupable": self.type not in ("anyType", "textarea") and self.type not in NUMERIC_TYPES,
            "htmlFormatted": False,
            "idLookup": self.type == "id",
            "label": self.label,
            "length": self.length,
            "name": self.name,
            "nameField": self.name_field,
            "nillable": self.nillable,
            "permissionable": self.custom,
            "picklistValues": [
                {"active": True, "defaultValue": False, "label": v, "validFor": None, "value": v} for v in self.picklist
            ],
            "polymorphicForeignKey": False,
            "precision": self.precision,
            "referenceTo": list(self.reference_to),
            "relationshipName": self.relationship_name,
            "restrictedPicklist": False,
            "scale": self.scale,
            "soapType": self.soap_type,
            "sortable": self.sortable,
            "type": self.type,
            "unique": self.unique,
            "updateable": self.updateable,
        }


@dataclass(frozen=True)
class SObject:
    """One sObject type: table name = API name, key prefix for its ids, fields in describe order."""

    name: str
    label: str
    label_plural: str
    key_prefix: str
    fields: tuple[FieldDef, ...]
    createable: bool = True
    updateable: bool = True
    deletable: bool = True
    history_object: str | None = None  # e.g. AccountHistory
    history_parent_field: str | None = None  # on a history object: the parent id field
    _by_lower: dict[str, FieldDef] = dc_field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_lower.update({f.name.lower(): f for f in self.fields})

    def field(self, name: str) -> FieldDef | None:
        """Case-insensitive lookup (SOQL and the REST API accept any case)."""
        return self._by_lower.get(name.lower())

    @property
    def has_is_deleted(self) -> bool:
        return "isdeleted" in self._by_lower

    @property
    def tracked_fields(self) -> tuple[FieldDef, ...]:
        return tuple(f for f in self.fields if f.tracked)

    def urls(self, version: str) -> dict[str, str]:
        base = f"/services/data/v{version}/sobjects/{self.name}"
        return {"sobject": base, "describe": f"{base}/describe", "rowTemplate": f"{base}/{{ID}}"}

    def describe_global_entry(self, version: str) -> dict[str, Any]:
        return {
            "activateable": False, "createable": self.createable, "custom": False, "customSetting": False,
            "deletable": self.deletable, "deprecatedAndHidden": False, "feedEnabled": False,
            "keyPrefix": self.key_prefix, "label": self.label, "labelPlural": self.label_plural,
            "layoutable": True, "mergeable": False, "mruEnabled": False, "name": self.name, "queryable": True,
            "replicateable": True, "retrieveable": True, "searchable": True, "triggerable": True,
            "undeletable": self.deletable, "updateable": self.updateable, "urls": self.urls(version),
        }

    def describe(self, version: str) -> dict[str, Any]:
        out = self.describe_global_entry(version)
        out.update({
            "childRelationships": [], "compactLayoutable": True, "fields": [f.describe() for f in self.fields],
            "networkScopeFieldName": None, "recordTypeInfos": [], "supportedScopes": [],
        })
        return out


def _audit(owner: bool = True, deleted: bool = True) -> tuple[FieldDef, ...]:
    """Audit fields every record carries; maintained by the server, never writable through the API."""
    out = []
    if owner:
        out.append(FieldDef("OwnerId", "reference", "Owner ID", length=18, nillable=False, reference_to=("User",),
                            relationship_name="Owner", tracked=True, history_field="Owner"))
    out += [
        FieldDef("CreatedDate", "datetime", "Created Date", nillable=False, createable=False, updateable=False,
                 system=True),
        FieldDef("CreatedById", "reference", "Created By ID", length=18, nillable=False, reference_to=("User",),
                 relationship_name="CreatedBy", createable=False, updateable=False, system=True),
        FieldDef("LastModifiedDate", "datetime", "Last Modified Date", nillable=False, createable=False,
                 updateable=False, system=True),
        FieldDef("LastModifiedById", "reference", "Last Modified By ID", length=18, nillable=False,
                 reference_to=("User",), relationship_name="LastModifiedBy", createable=False, updateable=False,
                 system=True),
        FieldDef("SystemModstamp", "datetime", "System Modstamp", nillable=False, createable=False, updateable=False,
                 system=True),
    ]
    if deleted:
        out.insert(0, FieldDef("IsDeleted", "boolean", "Deleted", nillable=False, createable=False, updateable=False,
                               system=True))
    return tuple(out)


def _id() -> FieldDef:
    return FieldDef("Id", "id", "Record ID", length=18, nillable=False, createable=False, updateable=False,
                    unique=True, system=True)


INDUSTRIES = ("Agriculture", "Banking", "Chemicals", "Communications", "Construction", "Consulting", "Education",
              "Energy", "Finance", "Healthcare", "Insurance", "Manufacturing", "Media", "Retail", "Technology",
              "Transportation", "Utilities", "Other")
STAGES = ("Prospecting", "Qualification", "Needs Analysis", "Value Proposition", "Proposal/Price Quote",
          "Negotiation/Review", "Closed Won", "Closed Lost")

ACCOUNT = SObject(
    "Account", "Account", "Accounts", "001",
    (
        _id(),
        *_audit(owner=False)[:1],  # IsDeleted
        FieldDef("Name", "string", "Account Name", length=255, nillable=False, name_field=True, tracked=True,
                 history_field="TextName"),
        FieldDef("Type", "picklist", "Account Type", length=255,
                 picklist=("Prospect", "Customer - Direct", "Customer - Channel", "Partner", "Other")),
        FieldDef("Industry", "picklist", "Industry", length=255, picklist=INDUSTRIES, tracked=True),
        FieldDef("AnnualRevenue", "currency", "Annual Revenue", precision=18, scale=2, tracked=True),
        FieldDef("NumberOfEmployees", "int", "Employees", digits=8),
        *_audit(deleted=False),
        FieldDef("Customer_Lifetime_Value__c", "currency", "Customer Lifetime Value", precision=18, scale=2,
                 custom=True, tracked=True),
        # the same amount under a second name (the scenario fills both): for mappings whose roles name it
        FieldDef("Lifetime_Value__c", "currency", "Lifetime Value", precision=18, scale=2, custom=True),
        FieldDef("Commission_Rate__c", "double", "Commission Rate", precision=5, scale=4, custom=True, tracked=True),
    ),
    history_object="AccountHistory",
)

OPPORTUNITY = SObject(
    "Opportunity", "Opportunity", "Opportunities", "006",
    (
        _id(),
        *_audit(owner=False)[:1],
        FieldDef("AccountId", "reference", "Account ID", length=18, reference_to=("Account",),
                 relationship_name="Account"),
        FieldDef("Name", "string", "Name", length=120, nillable=False, name_field=True),
        FieldDef("Amount", "currency", "Amount", precision=18, scale=2),
        FieldDef("StageName", "picklist", "Stage", length=255, nillable=False, picklist=STAGES),
        FieldDef("CloseDate", "date", "Close Date", nillable=False),
        FieldDef("Probability", "percent", "Probability (%)", precision=3, scale=0),
        FieldDef("IsClosed", "boolean", "Closed", nillable=False),
        FieldDef("IsWon", "boolean", "Won", nillable=False),
        *_audit(deleted=False),
    ),
)

USER = SObject(
    "User", "User", "Users", "005",
    (
        _id(),
        FieldDef("Username", "string", "Username", length=80, nillable=False, unique=True),
        FieldDef("LastName", "string", "Last Name", length=80, nillable=False),
        FieldDef("FirstName", "string", "First Name", length=40),
        FieldDef("Name", "string", "Full Name", length=121, nillable=False, name_field=True, createable=False,
                 updateable=False),
        FieldDef("Email", "email", "Email", length=128, nillable=False),
        FieldDef("Alias", "string", "Alias", length=8, nillable=False),
        FieldDef("Title", "string", "Title", length=80),
        FieldDef("IsActive", "boolean", "Active", nillable=False),
        FieldDef("UserType", "picklist", "User Type", length=255, picklist=("Standard",), createable=False,
                 updateable=False),
        *_audit(owner=False, deleted=False),
    ),
    deletable=False,
)

ORGANIZATION = SObject(
    "Organization", "Organization", "Organizations", "00D",
    (
        _id(),
        FieldDef("Name", "string", "Name", length=80, nillable=False, name_field=True),
        FieldDef("OrganizationType", "picklist", "Edition", length=255, picklist=("Enterprise Edition",)),
        FieldDef("InstanceName", "string", "Instance Name", length=5),
        FieldDef("IsSandbox", "boolean", "Is Sandbox", nillable=False),
        FieldDef("NamespacePrefix", "string", "Namespace Prefix", length=15),
        FieldDef("DefaultLocaleSidKey", "picklist", "Locale", length=255, nillable=False),
        FieldDef("TimeZoneSidKey", "picklist", "Default Time Zone", length=255, nillable=False),
        *_audit(owner=False, deleted=False),
    ),
    createable=False, updateable=False, deletable=False,
)

ACCOUNT_HISTORY = SObject(
    "AccountHistory", "Account History", "Account History", "017",
    (
        _id(),
        *_audit(owner=False)[:1],
        FieldDef("AccountId", "reference", "Account ID", length=18, nillable=False, reference_to=("Account",),
                 relationship_name="Account", createable=False, updateable=False),
        FieldDef("CreatedById", "reference", "Created By ID", length=18, nillable=False, reference_to=("User",),
                 relationship_name="CreatedBy", createable=False, updateable=False),
        FieldDef("CreatedDate", "datetime", "Created Date", nillable=False, createable=False, updateable=False),
        FieldDef("Field", "picklist", "Changed Field", length=255, nillable=False, createable=False,
                 updateable=False),
        FieldDef("DataType", "picklist", "Data Type", length=255, createable=False, updateable=False),
        FieldDef("OldValue", "anyType", "Old Value", length=255, createable=False, updateable=False,
                 filterable=False, sortable=False),
        FieldDef("NewValue", "anyType", "New Value", length=255, createable=False, updateable=False,
                 filterable=False, sortable=False),
    ),
    createable=False, updateable=False, deletable=False,
    history_parent_field="AccountId",
)

SOBJECTS: dict[str, SObject] = {o.name: o for o in (ACCOUNT, ACCOUNT_HISTORY, OPPORTUNITY, ORGANIZATION, USER)}
_SOBJECTS_LOWER = {k.lower(): v for k, v in SOBJECTS.items()}
BY_PREFIX = {o.key_prefix: o for o in SOBJECTS.values()}


def sobject(name: str) -> SObject | None:
    """Case-insensitive sObject lookup (`account` works as in SOQL)."""
    return _SOBJECTS_LOWER.get(name.lower())
