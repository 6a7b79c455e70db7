"""A local Kafka cluster of several nodes on 127.0.0.1 (KRaft, every node broker and controller).

    cluster = LocalCluster(data_dir, ports=[9092, 9093, 9094], cache_dir=...)
    cluster.start()            # clients connect to cluster.bootstrap (every node)
    cluster.kill(2)            # SIGKILL node 2, as a crash would
    cluster.restart(2)
    cluster.stop()

Each node is a `LocalBroker` (process.py) over `<data_dir>/node-<id>` with a `QuorumSeat`, so the
install, format, spawn, pid file, probe and log tails are the single broker's. The cluster adds
what the nodes share, kept in `<data_dir>/cluster.json` from the first start: the cluster id,
every node's client and controller port (the static voters every node is configured with, so
they must not move while any node runs), and the broker defaults below.

A node of a running cluster can be killed, shut down and restarted alone; it rejoins the
quorum with its own data, as a real broker would after a crash.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.client import AIOKafkaClient
from pydantic import BaseModel, ConfigDict

from steplog.errors import BrokerError
from steplog.server.broker.locking import exclusive_lock
from steplog.server.broker.process import (
    DEFAULT_HEAP,
    DEFAULT_VERSION,
    LOOPBACK,
    BrokerStatus,
    LocalBroker,
    QuorumSeat,
    free_loopback_port,
    loopback_ports,
    new_cluster_id,
    run_blocking,
)
from steplog.server.broker.quorum import active_controller
from steplog.server.private_files import write_private
from steplog.settings import Settings

LAYOUT_FILE = "cluster.json"
MAX_NODES = 9

# How long the controller waits for a silent broker's heartbeat before fencing it (moving its
# partitions' leadership to in-sync replicas and dropping it from their ISRs). Kafka's 9 s
# default is most of the stall a broker's crash costs (issue 23 saw 12-13 s); 6 s, with a
# heartbeat every second (six per session instead of four and a half), still rides out a GC
# pause or a starved CPU on a loaded machine without fencing a live broker. A killed active
# controller adds the quorum's own election, about 2-3 s (controller.quorum.fetch.timeout.ms).
SESSION_TIMEOUT_MS = 6000
HEARTBEAT_INTERVAL_MS = 1000


def cluster_properties(nodes: int) -> dict[str, str]:
    """The broker defaults of a cluster of `nodes`: every topic (Kafka's internal ones too)
    replicated up to 3 times, acknowledged writes on all replicas but one (so one node may die
    without stopping writes or losing an acknowledged record), and fast fencing."""
    replicas = min(3, nodes)
    min_isr = str(max(1, replicas - 1))
    return {
        "default.replication.factor": str(replicas),
        "min.insync.replicas": min_isr,
        "offsets.topic.replication.factor": str(replicas),
        "transaction.state.log.replication.factor": str(replicas),
        "transaction.state.log.min.isr": min_isr,
        "share.coordinator.state.topic.replication.factor": str(replicas),
        "share.coordinator.state.topic.min.isr": min_isr,
        "broker.session.timeout.ms": str(SESSION_TIMEOUT_MS),
        "broker.heartbeat.interval.ms": str(HEARTBEAT_INTERVAL_MS),
    }


class NodeLayout(BaseModel):
    model_config = ConfigDict(frozen=True)

    node_id: int
    port: int
    controller_port: int


class ClusterLayout(BaseModel):
    """What the nodes share, fixed at the cluster's first start (cluster.json)."""

    model_config = ConfigDict(frozen=True)

    cluster_id: str
    nodes: tuple[NodeLayout, ...]


class ClusterStatus(BaseModel):
    """What `LocalCluster.status()` saw: each node's process, and whether all of them run."""

    model_config = ConfigDict(frozen=True)

    running: bool
    bootstrap: str
    data_dir: Path
    nodes: tuple[BrokerStatus, ...]


class LocalCluster:
    """`len(ports)` Kafka nodes on 127.0.0.1, node i+1 serving clients on `ports[i]`, with their
    state under `data_dir`. Not secured (see LocalBroker's `quorum`).

    `start()` and `stop()` are idempotent and act on every node at once (a node cannot finish
    starting before a majority of the controllers runs); `kill`, `shutdown` and `restart` act on
    one node, by node id (1..N). The nodes outlive this object, as a LocalBroker does.
    """

    def __init__(
        self,
        data_dir: Path,
        ports: Sequence[int],
        *,
        heap: str = DEFAULT_HEAP,
        version: str = DEFAULT_VERSION,
        cache_dir: Path,
    ) -> None:
        if not 1 <= len(ports) <= MAX_NODES:
            raise BrokerError(f"{len(ports)} nodes: a local cluster has 1 to {MAX_NODES}")
        if len(set(ports)) != len(ports):
            raise BrokerError(f"ports {list(ports)}: each node needs a port of its own")
        self.data_dir = data_dir.resolve()
        self.layout = self._load_or_plan_layout(list(ports))
        voters = {node.node_id: node.controller_port for node in self.layout.nodes}
        properties = cluster_properties(len(ports))
        self._nodes = {
            node.node_id: LocalBroker(
                self.data_dir / f"node-{node.node_id}", node.port, heap=heap, version=version,
                cache_dir=cache_dir,
                quorum=QuorumSeat(node.node_id, self.layout.cluster_id, voters, properties),
            )
            for node in self.layout.nodes
        }

    @classmethod
    def from_settings(
        cls, settings: Settings, nodes: int, data_dir: Path | None = None,
        port: int | None = None,
    ) -> LocalCluster:
        """The cluster the settings point at: the ports of STEPLOG_KAFKA_BOOTSTRAP when it lists
        `nodes` hosts, else `nodes` consecutive ports from `port` (default: its first host's).
        `data_dir` defaults to `<settings.data_dir>/kafka-cluster`."""
        if settings.broker_secure:
            raise BrokerError(
                "STEPLOG_BROKER_SECURE=true: a secured local cluster is not supported; start a "
                "single secured broker (steplog broker start --secure) or an unsecured cluster"
            )
        listed = loopback_ports(settings.kafka_bootstrap)
        if port is None and len(listed) == nodes:
            ports = listed
        else:
            first = port if port is not None else listed[0]
            ports = list(range(first, first + nodes))
        return cls(
            data_dir if data_dir is not None else settings.data_dir / "kafka-cluster",
            ports, heap=settings.broker_heap, version=settings.kafka_version,
            cache_dir=settings.cache_dir,
        )

    @property
    def bootstrap(self) -> str:
        """Every node's address, comma-separated: clients find the cluster through any live one."""
        return ",".join(node.bootstrap for node in self._nodes.values())

    @property
    def node_ids(self) -> list[int]:
        return list(self._nodes)

    def node(self, node_id: int) -> LocalBroker:
        try:
            return self._nodes[node_id]
        except KeyError:
            raise BrokerError(
                f"node {node_id}: the cluster in {self.data_dir} has nodes {self.node_ids}"
            ) from None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> None:
        """Start every node not running, and return once each answers and the cluster's
        metadata lists all of them. On failure the nodes are stopped and BrokerError says
        which failed, with its log tail."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout
        with exclusive_lock(self.data_dir / "cluster.lock"):
            self._save_layout()
            try:
                self._on_every_node(lambda node: node.start(timeout))
                run_blocking(self._wait_for_brokers(set(self._nodes), deadline))
            except BaseException:
                self._on_every_node(lambda node: node.kill())
                raise

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every node (SIGTERM, SIGKILL after `timeout`), all at once: one by one, the last
        nodes would each wait for a controller quorum already gone."""
        self._on_every_node(lambda node: node.stop(timeout))

    def kill(self, node_id: int) -> None:
        """SIGKILL node `node_id`, as a crash would end it."""
        self.node(node_id).kill()

    def shutdown(self, node_id: int, timeout: float = 30.0) -> None:
        """Stop node `node_id` the controlled way (SIGTERM): Kafka moves its partitions'
        leadership to other replicas before it exits."""
        self.node(node_id).stop(timeout)

    def restart(self, node_id: int, timeout: float = 120.0) -> None:
        """Start node `node_id` again over its data (a no-op if it runs) and return once the
        cluster's metadata lists it as a live broker."""
        self.node(node_id).start(timeout)
        run_blocking(self._wait_for_brokers({node_id}, time.monotonic() + timeout))

    def status(self) -> ClusterStatus:
        nodes = tuple(node.status() for node in self._nodes.values())
        return ClusterStatus(
            running=all(node.running for node in nodes), bootstrap=self.bootstrap,
            data_dir=self.data_dir, nodes=nodes,
        )

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- who leads what --------------------------------------------------------------------

    def partition_leaders(self, topic: str) -> dict[int, int]:
        """Partition -> the node id leading it (-1: no leader), as the cluster's metadata says."""
        return run_blocking(_partition_leaders(self.bootstrap, topic))

    def leading_node(self, topic: str) -> int:
        """The node leading the most partitions of `topic` (the lowest id among equals)."""
        counts = Counter(leader for leader in self.partition_leaders(topic).values()
                         if leader >= 0)
        if not counts:
            raise BrokerError(f"no partition of topic {topic!r} has a leader")
        return min(counts, key=lambda node: (-counts[node], node))

    def active_controller(self) -> int:
        """The node id of the active KRaft controller."""
        return run_blocking(active_controller(self.bootstrap))

    # -- helpers ---------------------------------------------------------------------------

    def _on_every_node(self, action: Callable[[LocalBroker], None]) -> None:
        """Run `action` on every node at once; raise the first node's error (by node id) after
        all have finished."""
        with concurrent.futures.ThreadPoolExecutor(len(self._nodes)) as pool:
            futures = [pool.submit(action, node) for node in self._nodes.values()]
        for future in futures:
            error = future.exception()
            if error is not None:
                raise error

    async def _wait_for_brokers(self, node_ids: set[int], deadline: float) -> None:
        """Until the cluster's metadata lists `node_ids` as live (registered, unfenced) brokers:
        a node answers before every peer is registered."""
        delay = 0.05
        while True:
            client = AIOKafkaClient(bootstrap_servers=self.bootstrap, client_id="steplog-probe")
            try:
                await client.bootstrap()
                live = {broker.nodeId for broker in client.cluster.brokers()}
            except Exception:  # any failure means "not yet"; the deadline bounds it
                live = set()
            finally:
                await client.close()
            if node_ids <= live:
                return
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"the cluster in {self.data_dir} lists brokers {sorted(live)}, not yet "
                    f"{sorted(node_ids - live)}, after the start's deadline"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _load_or_plan_layout(self, ports: list[int]) -> ClusterLayout:
        path = self.data_dir / LAYOUT_FILE
        try:
            layout = ClusterLayout.model_validate_json(path.read_text("utf-8"))
        except FileNotFoundError:
            controller_ports: list[int] = []
            for _ in ports:
                controller_ports.append(free_loopback_port(avoid={*ports, *controller_ports}))
            return ClusterLayout(cluster_id=new_cluster_id(), nodes=tuple(
                NodeLayout(node_id=index, port=port, controller_port=controller)
                for index, (port, controller) in enumerate(zip(ports, controller_ports,
                                                               strict=True), start=1)
            ))
        except ValueError as exc:
            raise BrokerError(f"{path} is not a cluster layout ({exc})") from None
        recorded = [node.port for node in layout.nodes]
        if recorded != ports:
            raise BrokerError(
                f"the local cluster in {self.data_dir} was created with {len(recorded)} nodes on "
                f"ports {recorded}, not {ports}: start it with those (STEPLOG_KAFKA_BOOTSTRAP="
                f"{','.join(f'{LOOPBACK}:{port}' for port in recorded)}) or remove "
                f"{self.data_dir} for a new, empty cluster"
            )
        return layout

    def _save_layout(self) -> None:
        path = self.data_dir / LAYOUT_FILE
        if not path.is_file():
            write_private(path, self.layout.model_dump_json(indent=2) + "\n")


async def _partition_leaders(bootstrap: str, topic: str) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="steplog-leaders")
    await admin.start()
    try:
        (description,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if description["error_code"]:
        raise BrokerError(f"topic {topic!r}: metadata error {description['error_code']}")
    return {part["partition"]: part["leader"] for part in description["partitions"]}


def local_kafka(
    settings: Settings, nodes: int = 1, data_dir: Path | None = None, port: int | None = None
) -> LocalBroker | LocalCluster:
    """The local Kafka the settings point at: one broker (`<data dir>/kafka`), or a cluster of
    `nodes` (`<data dir>/kafka-cluster`). Both start, stop, report status() and a bootstrap."""
    if nodes == 1:
        return LocalBroker.from_settings(settings, data_dir=data_dir, port=port)
    return LocalCluster.from_settings(settings, nodes, data_dir=data_dir, port=port)
