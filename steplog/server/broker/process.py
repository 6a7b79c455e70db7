"""One local Apache Kafka node (KRaft, broker and controller in one JVM) over a data dir.

Everything the node owns lives in its data dir:

    server.properties   rendered on every start (ports may change between starts)
    log4j2.yaml         copied from this package on every start
    data/               Kafka's log.dirs: partitions, the metadata log, meta.properties
    server.log          the broker's INFO log (log4j2, appended across starts)
    broker.out          the JVM's stdout/stderr of the latest start: WARN and above, crashes
    broker.pid          {"pid", "port", "controller_port"} of the running broker
    broker.lock         serialises start/stop of this data dir across processes
    admin.credentials   the admin's SCRAM user and password, when secured (security.py)

Every file is written 0600: a secured broker's server.properties holds the admin's password.

A node of a multi-node cluster (cluster.py) is a LocalBroker with a `QuorumSeat`: its node id,
the cluster's id and controller voters, and the cluster's broker defaults; without one it is a
single-node cluster of its own.

The pid file is a hint, never trusted alone: a pid counts as this data dir's broker only while
/proc shows a live `kafka.Kafka` process started with this data dir's server.properties, so a
pid reused by an unrelated process after a crash is treated as stale, not killed.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Collection, Coroutine, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from aiokafka.client import AIOKafkaClient
from pydantic import BaseModel, ConfigDict

from steplog.errors import BrokerError
from steplog.kafka import PLAINTEXT, KafkaAccess, KafkaSecurity
from steplog.server.broker.install import ensure_kafka_jars, require_executables
from steplog.server.broker.locking import exclusive_lock
from steplog.server.broker.security import (
    CREDENTIALS_FILE,
    Acl,
    BrokerCredentials,
    add_user,
    load_or_create_admin,
    scram_format_arguments,
    secure_properties,
)
from steplog.server.private_files import write_private
from steplog.settings import Settings

LOOPBACK = "127.0.0.1"
DEFAULT_HEAP: str = Settings.model_fields["broker_heap"].default
DEFAULT_VERSION: str = Settings.model_fields["kafka_version"].default

_HEAP = re.compile(r"\d+[kKmMgG]")
_LOG_TAIL_LINES = 25
_KILL_GRACE_S = 10.0  # after SIGKILL the kernel frees the process quickly; this is a backstop
_T = TypeVar("_T")


class BrokerStatus(BaseModel):
    """What `LocalBroker.status()` saw: is this data dir's broker process alive, and where."""

    model_config = ConfigDict(frozen=True)

    running: bool
    pid: int | None
    bootstrap: str
    data_dir: Path


@dataclass(frozen=True)
class QuorumSeat:
    """A node's place in a multi-node KRaft cluster whose every node is broker and controller.

    `voters` maps each node id to its controller port: the static quorum every node is
    configured with (`controller.quorum.voters`), so the nodes need no bootstrap of the voter
    set and all of them are formatted alike, with `cluster_id`. `properties` are the cluster's
    broker defaults (replication, fencing) on top of the node's own configuration.
    """

    node_id: int
    cluster_id: str
    voters: Mapping[int, int]
    properties: Mapping[str, str] = field(default_factory=dict)


# A single node hosts one replica of everything: Kafka's internal topics default to 3 replicas.
_SINGLE_NODE_PROPERTIES: Mapping[str, str] = {
    "offsets.topic.replication.factor": "1",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
}


class _PidRecord(BaseModel):
    pid: int
    port: int
    controller_port: int


class LocalBroker:
    """A single-node Kafka broker bound to 127.0.0.1, whose state lives in `data_dir`.

    `start()` installs the jars if needed, formats the storage the first time, spawns the JVM
    detached and returns once the broker answers a Kafka request; `stop()` shuts it down. Both
    are idempotent, and the broker outlives the Python process that started it (a later
    `LocalBroker` over the same data dir finds it through the pid file and can stop it).

    `secure`: SASL/SCRAM and ACLs (security.py). A data dir is secured or not from its first
    start (the admin's credential is created with the storage): starting it the other way is
    refused, rather than opening a secured log or locking out a plain one's clients.

    `quorum`: this broker is one node of a multi-node cluster (cluster.py); its controller
    listens on its voter's port. Not with `secure` (each node's data dir would draw an admin
    password of its own, and the nodes must share one).
    """

    def __init__(
        self,
        data_dir: Path,
        port: int,
        *,
        controller_port: int | None = None,
        heap: str = DEFAULT_HEAP,
        version: str = DEFAULT_VERSION,
        cache_dir: Path,
        secure: bool = False,
        quorum: QuorumSeat | None = None,
    ) -> None:
        if quorum is not None:
            controller_port = _seat_controller_port(quorum, controller_port)
            if secure:
                raise BrokerError(
                    f"node {quorum.node_id} of a local cluster: a secured (SASL/SCRAM) cluster is "
                    f"not supported locally; start a single secured broker instead"
                )
        for name, value in (("port", port), ("controller_port", controller_port)):
            if value is not None and not 0 < value < 65536:
                raise BrokerError(f"{name}={value}: expected a TCP port between 1 and 65535")
        if controller_port == port:
            raise BrokerError(f"controller_port={controller_port}: must differ from port")
        if not _HEAP.fullmatch(heap):
            raise BrokerError(f"heap={heap!r}: expected a JVM size such as 512m or 1g")
        # Absolute, because the path is matched against the JVM's command line in /proc.
        self.data_dir = data_dir.resolve()
        self.port = port
        self.controller_port = controller_port
        self.heap = heap
        self.version = version
        self.cache_dir = cache_dir
        self.secure = secure
        self.quorum = quorum
        self._process: subprocess.Popen[bytes] | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, data_dir: Path | None = None, port: int | None = None
    ) -> LocalBroker:
        """The broker the settings point at: the port of the first kafka_bootstrap host.

        That host must be 127.0.0.1 or localhost: the local broker only ever serves loopback.
        `data_dir` defaults to `<settings.data_dir>/kafka`.
        """
        return cls(
            data_dir if data_dir is not None else settings.data_dir / "kafka",
            port if port is not None else loopback_ports(settings.kafka_bootstrap)[0],
            heap=settings.broker_heap,
            version=settings.kafka_version,
            cache_dir=settings.cache_dir,
            secure=settings.broker_secure,
        )

    @property
    def bootstrap(self) -> str:
        """The bootstrap servers clients use: "127.0.0.1:<port>"."""
        return f"{LOOPBACK}:{self.port}"

    def admin_credentials(self) -> BrokerCredentials:
        """The admin's SCRAM credentials of a secured broker (written at its first start)."""
        path = self._path(CREDENTIALS_FILE)
        if not self.secure or not path.is_file():
            raise BrokerError(f"the Kafka broker of {self.data_dir} is not secured: no {path}")
        return load_or_create_admin(self.data_dir)

    def admin_access(self) -> KafkaAccess:
        """How a client connects as the admin (the super user) of a secured broker."""
        return self.admin_credentials().access(self.bootstrap)

    def add_user(self, username: str, password: str, acls: list[Acl]) -> BrokerCredentials:
        """Create SCRAM user `username` (or give it a new password) on this running, secured
        broker and grant it `acls` (security.produce_acls, consume_acls); returns how it logs
        in. The password is the caller's to keep: the broker stores only a salted hash."""
        return run_blocking(add_user(self.admin_access(), username, password, acls))

    def _security(self) -> KafkaSecurity:
        return self.admin_access().security if self.secure else PLAINTEXT

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        """Start the broker, or do nothing if this data dir's broker already answers on `port`.

        Returns once the broker answers a metadata request. `timeout` bounds formatting plus
        start-up, not the one-off jar download (Maven has its own limit). Raises BrokerError if
        `port` (or an explicit `controller_port`) is taken by another process, if this data dir's
        broker runs on another port, or if the new broker exits or does not answer in time; in
        the last two cases it is killed and the error carries the tail of its logs.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Serialise with any other start/stop of this data dir (another process, another
        # LocalBroker object): two JVMs racing for one log dir would leave one failing half-way.
        with exclusive_lock(self._path("broker.lock")):
            deadline = time.monotonic() + timeout
            record = self._live_record()
            if record is not None:
                self._adopt_running(record, deadline)
                return
            self._require_port_free(self.port, "port")
            controller_port = self._choose_controller_port()
            (java,) = require_executables("java")
            libs = ensure_kafka_jars(self.version, self.cache_dir)
            deadline = time.monotonic() + timeout  # the download is not the broker's start-up
            formatted = self._path("data", "meta.properties").is_file()
            admin = self._admin_for_start(formatted)
            self._write_config(controller_port, admin)
            if not formatted:
                self._format_storage(java, libs, deadline, admin)
            process = self._spawn(java, libs)
            record = _PidRecord(pid=process.pid, port=self.port, controller_port=controller_port)
            self._write_pid_file(record)
            try:
                run_blocking(
                    _wait_until_answering(
                        self.bootstrap, deadline, lambda: process.poll() is not None,
                        self._security(),
                    )
                )
            except _BrokerExited:
                self._path("broker.pid").unlink(missing_ok=True)
                raise BrokerError(
                    f"Kafka broker in {self.data_dir} exited with status {process.returncode} "
                    f"during start-up{self._log_tail()}"
                ) from None
            except _BrokerSilent:
                self._kill(process.pid)
                self._path("broker.pid").unlink(missing_ok=True)
                raise BrokerError(
                    f"Kafka broker in {self.data_dir} did not answer on {self.bootstrap} within "
                    f"{timeout:g} s; it was killed{self._log_tail()}"
                ) from None
            except BaseException:
                # Interrupted (Ctrl-C, a test timeout) before the broker answered: a half-started
                # JVM nobody asked to keep must not be left behind.
                self._kill(process.pid)
                self._path("broker.pid").unlink(missing_ok=True)
                raise

    def stop(self, timeout: float = 30.0) -> None:
        """Stop this data dir's broker: SIGTERM, SIGKILL if still alive after `timeout`.

        SIGTERM lets Kafka shut down cleanly (flush, close the logs), so the next start skips
        log recovery. No-op if no broker of this data dir runs; removes the pid file.
        """
        self._end(lambda pid: self._terminate(pid, timeout))

    def kill(self) -> None:
        """SIGKILL this data dir's broker, as a crash or a power cut would end it: no controlled
        shutdown, no flush (failover tests). No-op if none runs; removes the pid file."""
        self._end(self._kill)

    def _end(self, how: Callable[[int], None]) -> None:
        with exclusive_lock(self._path("broker.lock")):
            record = self._live_record()
            pid = record.pid if record is not None else self._own_live_pid()
            if pid is not None:
                how(pid)
            self._path("broker.pid").unlink(missing_ok=True)

    def status(self) -> BrokerStatus:
        """Whether this data dir's broker process is alive (it may still be starting up)."""
        record = self._read_pid_file()
        running = record is not None and self._is_our_broker(record.pid)
        return BrokerStatus(
            running=running,
            pid=record.pid if running and record is not None else None,
            bootstrap=self.bootstrap,
            data_dir=self.data_dir,
        )

    def __enter__(self) -> LocalBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- start-up steps --------------------------------------------------------------------

    def _adopt_running(self, record: _PidRecord, deadline: float) -> None:
        if record.port != self.port:
            raise BrokerError(
                f"the Kafka broker of {self.data_dir} already runs (pid {record.pid}) on port "
                f"{record.port}, not {self.port}; stop it first"
            )
        # It may be a broker another process is still starting: give it until the deadline.
        try:
            run_blocking(
                _wait_until_answering(
                    self.bootstrap, deadline, lambda: not self._is_our_broker(record.pid),
                    self._security(),
                )
            )
        except (_BrokerExited, _BrokerSilent):
            raise BrokerError(
                f"the Kafka broker of {self.data_dir} (pid {record.pid}) runs but does not "
                f"answer on {self.bootstrap}; stop it and start again{self._log_tail()}"
            ) from None

    def _choose_controller_port(self) -> int:
        if self.controller_port is not None:  # always so for a node of a cluster
            self._require_port_free(self.controller_port, "controller_port")
            return self.controller_port
        # Keep the previous start's controller port when it is still free: the controller's
        # endpoint is also recorded in the metadata log's voter set, so keeping it avoids a
        # needless change there. Otherwise any free port will do for a single-node quorum.
        previous = _previous_controller_port(self._path("server.properties"))
        if previous is not None and previous != self.port and port_is_free(previous):
            return previous
        return free_loopback_port(avoid={self.port})

    def _require_port_free(self, port: int, name: str) -> None:
        if not port_is_free(port):
            raise BrokerError(
                f"{name} {port} on {LOOPBACK} is already in use by another process; the Kafka "
                f"broker of {self.data_dir} cannot listen there (choose another port or stop "
                f"whatever holds {port})"
            )

    def _admin_for_start(self, formatted: bool) -> BrokerCredentials | None:
        """The admin of a secured start (drawn before the first format), or None; BrokerError
        when the data dir was formatted the other way."""
        has_admin = self._path(CREDENTIALS_FILE).is_file()
        if formatted and has_admin and not self.secure:
            raise BrokerError(
                f"the Kafka broker of {self.data_dir} was formatted with security (SASL/SCRAM, "
                f"ACLs); start it secured (STEPLOG_BROKER_SECURE=true)"
            )
        if formatted and not has_admin and self.secure:
            raise BrokerError(
                f"the Kafka broker of {self.data_dir} was formatted without security, so it has "
                f"no admin user; start it without STEPLOG_BROKER_SECURE, or secure a new data dir"
            )
        return load_or_create_admin(self.data_dir) if self.secure else None

    def _write_config(self, controller_port: int, admin: BrokerCredentials | None) -> None:
        seat = self.quorum
        properties = {
            # One JVM is both the KRaft controller and the broker (of a cluster of one or more).
            "process.roles": "broker,controller",
            "node.id": str(seat.node_id if seat is not None else 1),
            **(
                {"controller.quorum.voters": ",".join(
                    f"{node}@{LOOPBACK}:{port}" for node, port in sorted(seat.voters.items())
                )}
                if seat is not None
                else {"controller.quorum.bootstrap.servers": f"{LOOPBACK}:{controller_port}"}
            ),
            # Loopback only, ever: a dev broker must not be reachable from the network.
            "listeners": (
                f"PLAINTEXT://{LOOPBACK}:{self.port},CONTROLLER://{LOOPBACK}:{controller_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://{LOOPBACK}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self._path("data")),
            **(seat.properties if seat is not None else _SINGLE_NODE_PROPERTIES),
            # The 3 s default waits for more consumers to join; tests and dev want it now.
            "group.initial.rebalance.delay.ms": "0",
        }
        if admin is not None:
            properties.update(secure_properties(self.port, controller_port, LOOPBACK, admin))
        text = "".join(f"{key}={value}\n" for key, value in properties.items())
        write_private(self._path("server.properties"), text)
        log4j = resources.files("steplog.server.broker").joinpath("log4j2.yaml").read_text("utf-8")
        write_private(self._path("log4j2.yaml"), log4j)

    def _format_storage(
        self, java: str, libs: Path, deadline: float, admin: BrokerCredentials | None
    ) -> None:
        """Format `data/` once; a restart must reuse it, since formatting again means a new
        cluster id and so an empty cluster (and Kafka refuses to format a formatted dir).

        Kafka formats a scratch dir, renamed to `data/` only once the format succeeded, so a format
        killed half-way is redone from scratch next time instead of leaving a `data/` whose
        meta.properties exists but whose metadata log does not.
        """
        data = self._path("data")
        if data.exists():
            raise BrokerError(
                f"{data} exists but holds no meta.properties, so it is not formatted Kafka "
                f"storage; remove it (it is this broker's log dir) and start again"
            )
        scratch = self._path("data.formatting")
        shutil.rmtree(scratch, ignore_errors=True)  # left by a format that was killed
        properties = self._path("format.properties")
        config = self._path("server.properties").read_text("utf-8")
        write_private(
            properties, config.replace(f"log.dirs={data}\n", f"log.dirs={scratch}\n")
        )
        command = [
            java,
            f"-Xmx{self.heap}",
            *self._log_options(),
            "-cp",
            f"{libs}/*",
            "kafka.tools.StorageTool",
            "format",
            "--cluster-id",
            self.quorum.cluster_id if self.quorum is not None else new_cluster_id(),
            "--config",
            str(properties),
            # A dynamic quorum of one voter: this node, at the controller listener. A cluster's
            # node has the static voters of its configuration instead.
            *(["--standalone"] if self.quorum is None else []),
            # SCRAM credentials live in the metadata log: the admin's is in it from the start.
            *(scram_format_arguments(admin) if admin is not None else []),
        ]
        try:
            result = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=max(deadline - time.monotonic(), 1.0),
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise BrokerError(f"formatting Kafka storage in {scratch} timed out") from None
        finally:
            properties.unlink(missing_ok=True)
        if result.returncode != 0:
            tail = "\n".join(result.stdout.rstrip().splitlines()[-_LOG_TAIL_LINES:])
            raise BrokerError(
                f"formatting Kafka storage in {scratch} failed (exit {result.returncode}):\n{tail}"
            )
        os.rename(scratch, data)

    def _spawn(self, java: str, libs: Path) -> subprocess.Popen[bytes]:
        command = [
            java,
            f"-Xmx{self.heap}",
            # Die on OOM rather than limp on with threads dead; the pid file then goes stale.
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            *self._log_options(),
            "-cp",
            f"{libs}/*",
            "kafka.Kafka",
            str(self._path("server.properties")),
        ]
        with open(self._path("broker.out"), "wb") as out:
            # start_new_session: the broker gets its own session and process group, so the
            # Ctrl-C or hang-up that ends the terminal or test run which started it does not
            # reach it, and it outlives this Python process; stop() is how it ends. Its output
            # goes to a file because nobody reads a pipe once this process is gone.
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,
            )
        self._process = process
        return process

    def _log_options(self) -> list[str]:
        return [
            f"-Dlog4j2.configurationFile={self._path('log4j2.yaml')}",
            f"-Dkafka.logs.dir={self.data_dir}",
        ]

    # -- shutdown --------------------------------------------------------------------------

    def _terminate(self, pid: int, timeout: float) -> None:
        _signal(pid, signal.SIGTERM)
        if self._wait_for_exit(pid, time.monotonic() + timeout):
            return
        self._kill(pid)

    def _kill(self, pid: int) -> None:
        _signal(pid, signal.SIGKILL)
        if not self._wait_for_exit(pid, time.monotonic() + _KILL_GRACE_S):
            raise BrokerError(f"Kafka broker pid {pid} survived SIGKILL for {_KILL_GRACE_S:.0f} s")

    def _wait_for_exit(self, pid: int, deadline: float) -> bool:
        """Poll until `pid` is gone, backing off from 10 ms to 200 ms; False at the deadline."""
        delay = 0.01
        while self._is_alive(pid):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.2)
        return True

    # -- process identity ------------------------------------------------------------------

    def _is_alive(self, pid: int) -> bool:
        if self._process is not None and self._process.pid == pid:
            # Our own child: poll() also reaps it, else it would linger as a zombie that
            # still answers os.kill(pid, 0).
            return self._process.poll() is None
        return self._is_our_broker(pid)

    def _is_our_broker(self, pid: int) -> bool:
        """Whether `pid` is a live kafka.Kafka JVM started with this data dir's config."""
        own = self._process
        if own is not None and own.pid == pid and own.poll() is not None:
            return False  # our child exited (and poll() just reaped it)
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            return False
        except OSError:
            return _pid_exists(pid)  # no /proc to read (not Linux): trust the pid file
        arguments = raw.decode(errors="replace").split("\0")
        # A zombie has an empty cmdline, so it does not match either.
        return "kafka.Kafka" in arguments and str(self._path("server.properties")) in arguments

    def _live_record(self) -> _PidRecord | None:
        """The pid file's record if its broker is alive; a stale pid file is removed."""
        record = self._read_pid_file()
        if record is None:
            return None
        if self._is_our_broker(record.pid):
            return record
        self._path("broker.pid").unlink(missing_ok=True)
        return None

    def _own_live_pid(self) -> int | None:
        if self._process is not None and self._process.poll() is None:
            return self._process.pid
        return None

    def _read_pid_file(self) -> _PidRecord | None:
        try:
            return _PidRecord.model_validate_json(self._path("broker.pid").read_text("utf-8"))
        except FileNotFoundError:
            return None
        except ValueError:
            return None  # unreadable: treated as stale, rewritten by the next start

    def _write_pid_file(self, record: _PidRecord) -> None:
        write_private(self._path("broker.pid"), record.model_dump_json() + "\n")

    # -- helpers ---------------------------------------------------------------------------

    def _path(self, *parts: str) -> Path:
        return self.data_dir.joinpath(*parts)

    def _log_tail(self) -> str:
        sections = []
        for name in ("broker.out", "server.log"):
            lines = _tail_lines(self._path(name), _LOG_TAIL_LINES)
            if lines:
                sections.append(f"\n--- last lines of {self._path(name)} ---\n" + "\n".join(lines))
        return "".join(sections) or f"\n(no log lines in {self.data_dir})"


class _BrokerExited(Exception):
    """The broker process ended while we waited for it to answer."""


class _BrokerSilent(Exception):
    """The deadline passed before the broker answered a metadata request."""


async def _wait_until_answering(
    bootstrap: str, deadline: float, exited: Callable[[], bool], security: KafkaSecurity
) -> None:
    """Return once the broker at `bootstrap` answers a metadata request listing a broker.

    An open TCP port is not enough: Kafka binds its listener before it accepts requests (it
    still has to recover logs, elect itself controller and register as a broker). The probe
    first waits for the port to accept connections, quietly, and only then sends Kafka
    requests, so that aiokafka does not log an error per refused connection.
    """
    host, _, port = bootstrap.rpartition(":")
    delay = 0.05
    port_open = False
    while True:
        if exited():
            raise _BrokerExited
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _BrokerSilent
        attempt = min(remaining, 5.0)
        if not port_open:
            port_open = await _accepts_connections(host, int(port), attempt)
        if port_open and await _answers_metadata(bootstrap, attempt, security):
            return
        await asyncio.sleep(min(delay, max(deadline - time.monotonic(), 0.0)))
        delay = min(delay * 2, 0.2)


async def _accepts_connections(host: str, port: int, timeout: float) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    await writer.wait_closed()
    return True


async def _answers_metadata(bootstrap: str, timeout: float, security: KafkaSecurity) -> bool:
    client = AIOKafkaClient(
        bootstrap_servers=bootstrap,
        client_id="steplog-broker-probe",
        request_timeout_ms=max(int(timeout * 1000), 100),
        **security.client_options(),
    )
    try:
        await asyncio.wait_for(client.bootstrap(), timeout)
        return bool(client.cluster.brokers())
    except Exception:  # any failure (refused, timeout, not ready) means "not yet"
        return False
    finally:
        await client.close()


def loopback_ports(bootstrap: str) -> list[int]:
    """The ports of `bootstrap`'s hosts, every one of which must be 127.0.0.1 or localhost: a
    local broker only ever serves loopback."""
    ports = []
    for address in bootstrap.split(","):
        host, _, port = address.strip().rpartition(":")
        if host not in (LOOPBACK, "localhost") or not port.isdigit():
            raise BrokerError(
                f"STEPLOG_KAFKA_BOOTSTRAP={bootstrap!r}: a local broker only serves loopback, "
                f"so every host must be {LOOPBACK}:<port> or localhost:<port>, not {address!r}"
            )
        ports.append(int(port))
    return ports


def run_blocking(coroutine: Coroutine[Any, Any, _T]) -> _T:
    """Run `coroutine` to completion from sync code, even when called inside an event loop
    (a test or server calling start()): then it runs on a fresh loop in a worker thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def port_is_free(port: int) -> bool:
    """Whether 127.0.0.1:`port` can be bound now.

    SO_REUSEADDR, as the JVM sets it, so that connections in TIME_WAIT from a previous run of
    the broker do not count as "taken"; a listening socket still does.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def free_loopback_port(avoid: Collection[int] = ()) -> int:
    """A port of 127.0.0.1 free now and not in `avoid` (ports chosen but not yet bound)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((LOOPBACK, 0))
            port: int = probe.getsockname()[1]
        if port not in avoid:
            return port


def _previous_controller_port(properties: Path) -> int | None:
    try:
        text = properties.read_text("utf-8")
    except FileNotFoundError:
        return None
    match = re.search(r"^controller\.quorum\.bootstrap\.servers=.*:(\d+)\s*$", text, re.MULTILINE)
    return int(match.group(1)) if match else None


def _seat_controller_port(seat: QuorumSeat, controller_port: int | None) -> int:
    """The controller port of `seat`'s node: its voter's, which `controller_port` may repeat."""
    voter = seat.voters.get(seat.node_id)
    if voter is None:
        raise BrokerError(
            f"node id {seat.node_id} is not among the cluster's voters {sorted(seat.voters)}"
        )
    if controller_port is not None and controller_port != voter:
        raise BrokerError(
            f"controller_port={controller_port}: node {seat.node_id} is the voter on port {voter}"
        )
    return voter


def new_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding, as Kafka's
    Uuid.randomUuid() makes them (and, like it, never starting with '-', which a command line
    would take for an option). Generated here to save a JVM start (`kafka-storage random-uuid`).
    """
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        if not text.startswith("-"):
            return text


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass  # already gone: that is what we wanted


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tail_lines(path: Path, count: int) -> list[str]:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(handle.tell() - 64 * 1024, 0))
            text = handle.read().decode(errors="replace")
    except FileNotFoundError:
        return []
    return text.rstrip().splitlines()[-count:]
