"""A real Apache Kafka broker (KRaft) on this machine, installed from Maven Central.

    with LocalBroker.from_settings(load_settings()) as broker:
        ...  # clients connect to broker.bootstrap

`ensure_kafka_jars` (install.py) fetches the broker's jars once into the cache; `LocalBroker`
(process.py) formats, starts, probes and stops one node over a data dir; `LocalCluster`
(cluster.py) runs several such nodes as one cluster.
"""

from steplog.server.broker.cluster import ClusterStatus, LocalCluster, local_kafka
from steplog.server.broker.install import ensure_kafka_jars, kafka_libs_dir
from steplog.server.broker.process import BrokerStatus, LocalBroker

__all__ = [
    "BrokerStatus", "ClusterStatus", "LocalBroker", "LocalCluster", "ensure_kafka_jars",
    "kafka_libs_dir", "local_kafka",
]
