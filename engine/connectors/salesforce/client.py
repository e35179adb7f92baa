"""recon's connection to Salesforce: settings, login, and a simple-salesforce client bound to the session.

recon obtains the session itself and then builds `simple_salesforce.Salesforce(instance_url=…,
session_id=…)`: simple-salesforce's built-in login can only reach `https://{domain}.salesforce.com`,
while recon must also reach a My Domain URL, a proxy or the local stack (`SF_LOGIN_URL`).

Credential sets (exactly one; see the contract in ARCHITECTURE.md):

| method             | settings                                                        |
|--------------------|-----------------------------------------------------------------|
| `oauth_password`   | username + password (+ security_token) + consumer_key + consumer_secret |
| `soap`             | username + password (+ security_token), no consumer key         |
| `jwt`              | consumer_key + username + jwt_key_file                          |
| `session_id`       | session_id + instance_url                                       |
| `client_credentials` | consumer_key + consumer_secret, no username                   |

TLS: `SF_CA_BUNDLE` is the CA file to trust. The HTTP session has `trust_env = False`, because
`requests` lets `REQUESTS_CA_BUNDLE`/`CURL_CA_BUNDLE` override a session's `verify` and would add
`.netrc` credentials; without `SF_CA_BUNDLE` those variables (else certifi) are used explicitly, and
proxy variables are applied explicitly too (never for loopback hosts).

Errors are one line, never contain a secret, and carry their exit code (they are recon errors):
`SalesforceAuthError` (credentials missing or rejected; `SalesforceConfigError`, a subclass, for
other settings problems such as an untrusted certificate) → exit 2; `SalesforceRefused` (a request
the API refused: an unknown field or object, a malformed condition) → exit 2;
`SalesforceUnreachable` (connection refused, timeouts, or 429/5xx/REQUEST_LIMIT_EXCEEDED until the
retry deadline) → exit 5. Which is which is decided in one place, :func:`classify` (and
:func:`response_outage` for a raw response); every call is retried by recon's one retry policy
(:mod:`engine.connectors.retry`), honouring `Retry-After`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from engine.connectors.retry import Outage, RetryPolicy, deadline_from_env
from engine.core.errors import QueryRejected, ReconError, ServiceUnreachable, UsageError

DEFAULT_LOGIN_URL = "https://login.salesforce.com"
DEFAULT_API_VERSION = "59.0"
RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
#: error codes of the API that a wait can cure (any other refusal is the user's to fix)
TRANSIENT_CODES = frozenset({"REQUEST_LIMIT_EXCEEDED", "SERVER_UNAVAILABLE", "QUERY_TIMEOUT"})
RETRY_DEADLINE_ENV = "RECON_SF_RETRY_DEADLINE"
#: Salesforce's calls are counted against the org's daily limit: a longer backoff cap, fewer calls
MAX_DELAY_S = 20.0
HINT = "check SF_LOGIN_URL/SF_INSTANCE_URL, the network, and the org's status"


class SalesforceError(ReconError):
    """Base of recon's Salesforce errors: `str()` is one line without secrets; the exit code comes
    from the second base of each subclass (UsageError: 2, ServiceUnreachable: 5)."""


class SalesforceAuthError(SalesforceError, UsageError):
    """Credentials are missing, inconsistent or rejected (exit code 2)."""


class SalesforceConfigError(SalesforceAuthError):
    """A Salesforce setting is wrong (URL, API version, CA bundle, key file) (exit code 2)."""


class SalesforceRefused(SalesforceError, QueryRejected):
    """The API refused a request recon built from the user's input: an unknown field or object, a
    malformed condition, a missing permission (exit code 2)."""


class SalesforceUnreachable(SalesforceError, ServiceUnreachable):
    """Salesforce did not answer usefully before the retry deadline (exit code 5)."""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


@dataclass(frozen=True)
class SalesforceSettings:
    """Where and how to log in. Secrets are excluded from `repr`; build with `from_env` or directly."""

    login_url: str = DEFAULT_LOGIN_URL
    instance_url: str | None = None
    ca_bundle: str | None = None
    api_version: str = DEFAULT_API_VERSION
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    security_token: str | None = field(default=None, repr=False)
    consumer_key: str | None = field(default=None, repr=False)
    consumer_secret: str | None = field(default=None, repr=False)
    session_id: str | None = field(default=None, repr=False)
    jwt_key_file: str | None = None
    timeout: float = 60.0
    retry_deadline: float = 120.0

    def __post_init__(self) -> None:
        for name in ("login_url", "instance_url"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, value.strip().rstrip("/"))
        version = str(self.api_version).strip().lstrip("vV")
        if not re.fullmatch(r"\d{2}\.\d", version):
            raise SalesforceConfigError(f"SF_API_VERSION {self.api_version!r} is not an API version like 59.0")
        object.__setattr__(self, "api_version", version)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> SalesforceSettings:
        """Read the `SF_*` variables (empty values count as unset); keyword overrides win."""
        env = os.environ if env is None else env

        def get(key: str) -> str | None:
            value = env.get(key)
            return value if value not in (None, "") else None

        values: dict[str, Any] = {
            "login_url": get("SF_LOGIN_URL") or DEFAULT_LOGIN_URL, "instance_url": get("SF_INSTANCE_URL"),
            "ca_bundle": get("SF_CA_BUNDLE"), "api_version": get("SF_API_VERSION") or DEFAULT_API_VERSION,
            "username": get("SF_USERNAME"), "password": get("SF_PASSWORD"),
            "security_token": get("SF_SECURITY_TOKEN"), "consumer_key": get("SF_CONSUMER_KEY"),
            "consumer_secret": get("SF_CONSUMER_SECRET"), "session_id": get("SF_SESSION_ID"),
            "jwt_key_file": get("SF_JWT_KEY_FILE"),
        }
        values.update(overrides)
        return cls(**values)

    def with_(self, **changes: Any) -> SalesforceSettings:
        return replace(self, **changes)

    @property
    def auth_method(self) -> str:
        """Which login flow the settings select; raises SalesforceAuthError when none or several fit."""
        self.validate()
        if self.session_id:
            return "session_id"
        if self.jwt_key_file:
            return "jwt"
        if self.password is not None:
            return "oauth_password" if self.consumer_key else "soap"
        return "client_credentials"

    def validate(self) -> None:
        """Check that exactly one credential set is complete; messages name the variables to fix."""
        for name, value in (("SF_LOGIN_URL", self.login_url), ("SF_INSTANCE_URL", self.instance_url)):
            if value is not None and not re.match(r"^https://[^/\s]+", value):
                raise SalesforceConfigError(f"{name} must be an https:// URL (Salesforce only speaks HTTPS), "
                                            f"got {value!r}")
        if self.ca_bundle is not None and not Path(self.ca_bundle).is_file():
            raise SalesforceConfigError(f"SF_CA_BUNDLE {self.ca_bundle} is not a readable file; point it at the "
                                        "PEM CA certificate that signed the server's certificate")
        if self.session_id:
            extra = [n for n, v in (("SF_PASSWORD", self.password), ("SF_JWT_KEY_FILE", self.jwt_key_file),
                                    ("SF_CONSUMER_SECRET", self.consumer_secret)) if v]
            if extra:
                raise SalesforceAuthError(f"SF_SESSION_ID is set together with {', '.join(extra)}; set only one "
                                          "Salesforce credential set")
            if not self.instance_url:
                raise SalesforceAuthError("SF_SESSION_ID needs SF_INSTANCE_URL (the https:// URL of the org the "
                                          "session belongs to)")
            return
        if self.jwt_key_file:
            if self.password:
                raise SalesforceAuthError("SF_JWT_KEY_FILE and SF_PASSWORD are both set; set only one Salesforce "
                                          "credential set")
            missing = [n for n, v in (("SF_CONSUMER_KEY", self.consumer_key), ("SF_USERNAME", self.username))
                       if not v]
            if missing:
                raise SalesforceAuthError(f"the JWT bearer login (SF_JWT_KEY_FILE) also needs {' and '.join(missing)}")
            if not Path(self.jwt_key_file).is_file():
                raise SalesforceConfigError(f"SF_JWT_KEY_FILE {self.jwt_key_file} is not a readable file")
            return
        if self.password is not None:
            if not self.username:
                raise SalesforceAuthError("SF_PASSWORD is set but SF_USERNAME is not; set both")
            if self.consumer_key and not self.consumer_secret:
                raise SalesforceAuthError("SF_CONSUMER_KEY is set without SF_CONSUMER_SECRET: the OAuth password "
                                          "flow needs both (or unset SF_CONSUMER_KEY to use the SOAP login)")
            return
        if self.security_token:
            raise SalesforceAuthError("SF_SECURITY_TOKEN is set but SF_PASSWORD is not; set SF_USERNAME and "
                                      "SF_PASSWORD too")
        if self.username:
            raise SalesforceAuthError("SF_USERNAME is set without SF_PASSWORD (or SF_CONSUMER_KEY + "
                                      "SF_JWT_KEY_FILE for the JWT bearer flow)")
        if self.consumer_key and self.consumer_secret:
            return
        raise SalesforceAuthError("no Salesforce credentials: set SF_USERNAME and SF_PASSWORD (+ SF_SECURITY_TOKEN, "
                                  "optionally SF_CONSUMER_KEY and SF_CONSUMER_SECRET), or SF_SESSION_ID with "
                                  "SF_INSTANCE_URL, or SF_CONSUMER_KEY + SF_USERNAME + SF_JWT_KEY_FILE")

    def secrets(self) -> list[str]:
        """Every secret value, longest first (for scrubbing server-provided text)."""
        vals = [self.password, self.security_token, self.consumer_secret, self.session_id]
        if self.password and self.security_token:
            vals.append(self.password + self.security_token)
        return sorted({v for v in vals if v}, key=len, reverse=True)


def _scrub(text: str, settings: SalesforceSettings) -> str:
    out = _one_line(text)
    for secret in settings.secrets():
        out = out.replace(secret, "***")
    return out


# -- HTTP with retries: which failure is which ----------------------------------------------------

def classify(exc: BaseException, host: str) -> Outage | ReconError | None:
    """Salesforce's verdict on a failed call (``requests`` or simple-salesforce exception): a TLS or
    URL problem and a refused request are the user's to fix; connection failures, timeouts, 429,
    5xx and the transient error codes are outages; None for anything else."""
    from simple_salesforce.exceptions import SalesforceError as ApiError

    if isinstance(exc, requests.exceptions.SSLError):
        return SalesforceConfigError(f"TLS verification of https://{host} failed (certificate not trusted); set "
                                     "SF_CA_BUNDLE to the CA certificate that signed it")
    if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                        requests.exceptions.InvalidSchema)):
        return SalesforceConfigError(f"invalid Salesforce URL for {host}: {_one_line(str(exc))}")
    if isinstance(exc, requests.exceptions.Timeout):
        return Outage("timed out")
    if isinstance(exc, requests.exceptions.ConnectionError):
        return Outage("connection refused" if "refused" in str(exc).lower() else "connection failed")
    if isinstance(exc, ApiError):
        body = exc.content
        code, msg = "", _one_line(str(exc))
        if isinstance(body, list) and body and isinstance(body[0], dict):
            code, msg = str(body[0].get("errorCode", "")), _one_line(str(body[0].get("message", "")))
        if exc.status == 429 or exc.status >= 500 or code in TRANSIENT_CODES:
            return Outage(f"{code or f'HTTP {exc.status}'} {msg}".strip())
        if code == "INVALID_SESSION_ID":
            return SalesforceAuthError(f"Salesforce at https://{host} rejected the session ({msg}): log in again "
                                       "(check the credentials)")
        return SalesforceRefused(f"{code or f'HTTP {exc.status}'} {msg}".strip())
    return None


def response_outage(resp: requests.Response) -> Outage | None:
    """A response that means "wait": 429, 502/503/504 or 403 REQUEST_LIMIT_EXCEEDED (with the
    server's Retry-After); None for any other (callers interpret it)."""
    if resp.status_code in RETRYABLE_STATUS or (
            resp.status_code == 403 and "REQUEST_LIMIT_EXCEEDED" in resp.text[:2000]):
        retry_after = resp.headers.get("Retry-After")
        code = _error_code(resp)
        return Outage(f"HTTP {resp.status_code}{f' {code}' if code else ''}",
                      float(retry_after) if retry_after and retry_after.isdigit() else None)
    return None


def call_policy(deadline_s: float | None = None) -> RetryPolicy:
    """The retry policy of a Salesforce call: ``deadline_s`` (a login's ``retry_deadline``), else
    ``RECON_SF_RETRY_DEADLINE`` (60 s)."""
    if deadline_s is not None:
        return RetryPolicy(deadline_s, max_delay_s=MAX_DELAY_S)
    return RetryPolicy(deadline_from_env(RETRY_DEADLINE_ENV, 60.0), knob=RETRY_DEADLINE_ENV, max_delay_s=MAX_DELAY_S)


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_http_session(settings: SalesforceSettings) -> requests.Session:
    """A requests.Session that trusts exactly the configured CA and ignores `.netrc` (see module doc)."""
    s = requests.Session()
    s.trust_env = False
    s.verify = settings.ca_bundle or os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    _apply_proxies(s, settings.login_url)
    return s


def _apply_proxies(s: requests.Session, url: str) -> None:
    host = urlsplit(url).hostname
    s.proxies = {} if _is_loopback(host) else dict(requests.utils.get_environ_proxies(url))


def request_with_retries(session: requests.Session, method: str, url: str, settings: SalesforceSettings, *,
                         what: str, **kwargs: Any) -> requests.Response:
    """One HTTP call, retried on connection errors, timeouts, 429/5xx-unavailable and REQUEST_LIMIT_EXCEEDED.

    Returns the response of the first attempt that is not retryable (any status: callers interpret
    it). Raises SalesforceUnreachable once `settings.retry_deadline` is spent and SalesforceConfigError
    for TLS or URL problems, which retrying cannot fix. ``what``: the call, for messages ("the SOAP
    login").
    """
    kwargs.setdefault("timeout", settings.timeout)
    host = urlsplit(url).netloc

    def once() -> requests.Response:
        resp = session.request(method, url, **kwargs)
        outage = response_outage(resp)
        if outage is not None:
            raise outage
        return resp

    return call_policy(settings.retry_deadline).run(
        once, lambda exc: classify(exc, host), service=f"Salesforce at https://{host}", doing=f"during {what}",
        hint=HINT, unreachable=SalesforceUnreachable)


def _error_code(resp: requests.Response) -> str | None:
    try:
        body = resp.json()
    except ValueError:
        return None
    if isinstance(body, list) and body and isinstance(body[0], dict):
        return str(body[0].get("errorCode") or "") or None
    if isinstance(body, dict):
        return str(body.get("error") or body.get("errorCode") or "") or None
    return None


# -- the connection -------------------------------------------------------------------------------

class SalesforceConnection:
    """A logged-in session: `.sf` (simple-salesforce client), `.org_id`, `.user_id`, `.instance_url`.

    `repr`/`str` show where and who, never the session id or any credential.
    """

    def __init__(self, sf: Any, *, org_id: str, user_id: str | None, instance_url: str, api_version: str,
                 auth_method: str, session: requests.Session, settings: SalesforceSettings) -> None:
        self.sf = sf
        self.org_id = org_id
        self.user_id = user_id
        self.instance_url = instance_url
        self.api_version = api_version
        self.auth_method = auth_method
        self.http = session
        self._settings = settings

    @property
    def user(self) -> str:
        """Who the session acts as, for messages (field-level security is per user): the username
        and the user id as far as the login told them, never a credential."""
        name = self._settings.username
        if name and self.user_id:
            return f"{name} ({self.user_id})"
        return name or self.user_id or "(unknown)"

    def __repr__(self) -> str:
        return (f"SalesforceConnection(instance_url={self.instance_url!r}, org_id={self.org_id!r}, "
                f"user_id={self.user_id!r}, api_version={self.api_version!r}, auth_method={self.auth_method!r})")

    __str__ = __repr__

    @property
    def settings(self) -> SalesforceSettings:
        return self._settings

    @property
    def base_url(self) -> str:
        """`https://host/services/data/vXX.X/`"""
        return f"{self.instance_url}/services/data/v{self.api_version}/"

    def request(self, method: str, path_or_url: str, *, what: str | None = None, **kwargs: Any) -> requests.Response:
        """An authenticated REST/Bulk call with recon's retry policy (paths are relative to `base_url`)."""
        url = path_or_url if path_or_url.startswith("https://") else (
            self.instance_url + path_or_url if path_or_url.startswith("/") else self.base_url + path_or_url)
        headers = {"Authorization": f"Bearer {self.sf.session_id}", "Accept": "application/json"}
        headers.update(kwargs.pop("headers", None) or {})
        return request_with_retries(self.http, method, url, self._settings, what=what or f"{method} {urlsplit(url).path}",
                                    headers=headers, **kwargs)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> SalesforceConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(settings: SalesforceSettings) -> SalesforceConnection:
    """Log in with the configured credential set and return a connection bound to the session."""
    from simple_salesforce import Salesforce

    method = settings.auth_method
    session = make_http_session(settings)
    try:
        if method == "session_id":
            sid, instance, org_id, user_id = _session_login(session, settings)
        elif method == "soap":
            sid, instance, org_id, user_id = _soap_login(session, settings)
        else:
            sid, instance, org_id, user_id = _oauth_login(session, settings, method)
        instance = (settings.instance_url or instance).rstrip("/")
        if not instance.startswith("https://"):
            raise SalesforceConfigError(f"the login returned a non-https instance URL {instance!r}; set "
                                        "SF_INSTANCE_URL")
        _apply_proxies(session, instance)
        sf = Salesforce(instance_url=instance, session_id=sid, session=session, version=settings.api_version)
    except BaseException:
        session.close()
        raise
    return SalesforceConnection(sf, org_id=org_id, user_id=user_id, instance_url=instance,
                                api_version=settings.api_version, auth_method=method, session=session,
                                settings=settings)


_ID_URL = re.compile(r"/id/([0-9A-Za-z]{15,18})/([0-9A-Za-z]{15,18})/?$")


def _org_user_from_id_url(url: str | None) -> tuple[str, str | None]:
    m = _ID_URL.search(url or "")
    if not m:
        raise SalesforceAuthError("the token endpoint answered without an identity URL; is SF_LOGIN_URL a "
                                  "Salesforce login endpoint?")
    return _to18(m.group(1)), _to18(m.group(2))


def _to18(value: str) -> str:
    from engine.core.sfid import to18

    try:
        return to18(value)
    except ValueError:
        return value


def _oauth_login(session: requests.Session, settings: SalesforceSettings,
                 method: str) -> tuple[str, str, str, str | None]:
    url = f"{settings.login_url}/services/oauth2/token"
    headers: dict[str, str] = {"Accept": "application/json"}
    if method == "oauth_password":
        data = {"grant_type": "password", "client_id": settings.consumer_key or "",
                "client_secret": settings.consumer_secret or "", "username": settings.username or "",
                "password": (settings.password or "") + (settings.security_token or "")}
        what = "the OAuth password login"
    elif method == "client_credentials":
        import base64

        pair = f"{settings.consumer_key}:{settings.consumer_secret}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        data = {"grant_type": "client_credentials"}
        what = "the OAuth client-credentials login"
    else:
        data = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": _jwt_assertion(settings)}
        what = "the JWT bearer login"
    resp = request_with_retries(session, "POST", url, settings, what=what, data=data, headers=headers)
    try:
        body = resp.json()
    except ValueError:
        body = None
    if resp.status_code == 200 and isinstance(body, dict) and body.get("access_token"):
        org_id, user_id = _org_user_from_id_url(body.get("id"))
        return str(body["access_token"]), str(body.get("instance_url") or settings.login_url), org_id, user_id
    if not isinstance(body, dict):
        raise SalesforceConfigError(f"{settings.login_url} did not answer like a Salesforce token endpoint "
                                    f"(HTTP {resp.status_code}); check SF_LOGIN_URL")
    raise SalesforceAuthError(_oauth_message(method, str(body.get("error") or ""),
                                             str(body.get("error_description") or ""), settings))


def _oauth_message(method: str, error: str, desc: str, settings: SalesforceSettings) -> str:
    detail = _scrub(f"{error}: {desc}" if desc else error, settings)
    who = f" for user {settings.username}" if settings.username else ""
    if error == "invalid_client_id":
        fix = "check SF_CONSUMER_KEY (the connected app's consumer key)"
    elif error == "invalid_client":
        fix = "check SF_CONSUMER_KEY and SF_CONSUMER_SECRET"
    elif method == "jwt":
        fix = ("check SF_USERNAME, SF_CONSUMER_KEY, that the certificate of SF_JWT_KEY_FILE is uploaded to the "
               "connected app, and that the user is pre-authorized")
    elif method == "client_credentials":
        fix = "check SF_CONSUMER_KEY, SF_CONSUMER_SECRET and the connected app's run-as user"
    else:
        fix = "check SF_USERNAME, SF_PASSWORD and SF_SECURITY_TOKEN"
    return f"Salesforce rejected the login{who} ({detail}); {fix}"


def _jwt_audience(login_url: str) -> str:
    """Salesforce wants login/test.salesforce.com as `aud` even when the token URL is a My Domain."""
    host = urlsplit(login_url).hostname or ""
    if host.endswith(".salesforce.com") or host.endswith(".force.com"):
        sandbox = host.startswith("test.") or ".sandbox." in host
        return "https://test.salesforce.com" if sandbox else "https://login.salesforce.com"
    return login_url


def _jwt_assertion(settings: SalesforceSettings) -> str:
    import jwt

    try:
        key = Path(settings.jwt_key_file or "").read_bytes()
    except OSError as exc:
        raise SalesforceConfigError(f"cannot read SF_JWT_KEY_FILE {settings.jwt_key_file}: {exc.strerror}") from None
    claims = {"iss": settings.consumer_key, "sub": settings.username, "aud": _jwt_audience(settings.login_url),
              "exp": int(time.time()) + 180}
    try:
        return jwt.encode(claims, key, algorithm="RS256")
    except (ValueError, TypeError, jwt.PyJWTError):
        raise SalesforceConfigError(f"SF_JWT_KEY_FILE {settings.jwt_key_file} is not a PEM RSA private key") from None


def _soap_login(session: requests.Session, settings: SalesforceSettings) -> tuple[str, str, str, str | None]:
    url = f"{settings.login_url}/services/Soap/u/{settings.api_version}"
    password = (settings.password or "") + (settings.security_token or "")
    envelope = (
        '<?xml version="1.0" encoding="utf-8" ?><env:Envelope xmlns:xsd="http://www.w3.org/2001/XMLSchema" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:env="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns:urn="urn:partner.soap.sforce.com"><env:Header><urn:CallOptions><urn:client>recon</urn:client>'
        "</urn:CallOptions></env:Header><env:Body><n1:login xmlns:n1=\"urn:partner.soap.sforce.com\">"
        f"<n1:username>{escape(settings.username or '')}</n1:username><n1:password>{escape(password)}</n1:password>"
        "</n1:login></env:Body></env:Envelope>"
    )
    resp = request_with_retries(session, "POST", url, settings, what="the SOAP login", data=envelope.encode(),
                                headers={"Content-Type": "text/xml; charset=UTF-8", "SOAPAction": "login"})
    values = _xml_values(resp.content)
    if values is None:
        raise SalesforceConfigError(f"{settings.login_url} did not answer like a Salesforce SOAP endpoint "
                                    f"(HTTP {resp.status_code}); check SF_LOGIN_URL and SF_API_VERSION")
    if resp.status_code == 200 and values.get("sessionId") and values.get("serverUrl"):
        server = urlsplit(values["serverUrl"])
        instance = f"https://{server.netloc}"
        org_id = values.get("organizationId") or values["sessionId"].split("!", 1)[0]
        return values["sessionId"], instance, _to18(org_id), _to18(values["userId"]) if values.get("userId") else None
    code = values.get("exceptionCode") or values.get("faultcode") or f"HTTP {resp.status_code}"
    message = values.get("exceptionMessage") or values.get("faultstring") or ""
    detail = _scrub(f"{code}: {message}" if message else code, settings)
    raise SalesforceAuthError(f"Salesforce rejected the SOAP login for user {settings.username} ({detail}); check "
                              "SF_USERNAME, SF_PASSWORD and SF_SECURITY_TOKEN")


def _xml_values(content: bytes) -> dict[str, str] | None:
    """Leaf element texts by local name (first occurrence), or None when the body is not XML."""
    try:
        root = ET.fromstring(content)
    except ET.ParseError:
        return None
    out: dict[str, str] = {}
    for el in root.iter():
        name = el.tag.rsplit("}", 1)[-1].split(":")[-1]
        if el.text and name not in out and len(el) == 0:
            out[name] = el.text.strip()
    return out


def _session_login(session: requests.Session, settings: SalesforceSettings) -> tuple[str, str, str, str | None]:
    """A given session id: check it (userinfo) and learn the org and user it belongs to."""
    instance = settings.instance_url or ""
    sid = settings.session_id or ""
    resp = request_with_retries(session, "GET", f"{instance}/services/oauth2/userinfo", settings,
                                what="checking SF_SESSION_ID",
                                headers={"Authorization": f"Bearer {sid}", "Accept": "application/json"})
    if resp.status_code in (401, 403):
        raise SalesforceAuthError(f"the session in SF_SESSION_ID was rejected by {instance} (expired or invalid); "
                                  "log in again or use another credential set")
    try:
        body = resp.json()
    except ValueError:
        body = None
    if resp.status_code != 200 or not isinstance(body, dict):
        raise SalesforceConfigError(f"{instance} did not answer like a Salesforce org (HTTP {resp.status_code} on "
                                    "userinfo); check SF_INSTANCE_URL")
    org_id = str(body.get("organization_id") or sid.split("!", 1)[0])
    user_id = body.get("user_id")
    return sid, instance, _to18(org_id), _to18(str(user_id)) if user_id else None
