"""The local cluster's shape, without starting it: its broker defaults, its nodes' quorum, and
a data dir that refuses ports other than those it was created with."""

from pathlib import Path

import pytest

from steplog.errors import BrokerError
from steplog.server.broker.cluster import LAYOUT_FILE, LocalCluster, cluster_properties
from steplog.settings import load_settings


@pytest.mark.parametrize(("nodes", "replicas", "min_isr"), [(1, "1", "1"), (2, "2", "1"),
                                                             (3, "3", "2"), (5, "3", "2")])
def test_topics_are_replicated_up_to_three_times_and_need_all_but_one(
    nodes: int, replicas: str, min_isr: str
) -> None:
    properties = cluster_properties(nodes)
    assert properties["default.replication.factor"] == replicas
    assert properties["offsets.topic.replication.factor"] == replicas
    assert properties["min.insync.replicas"] == min_isr
    assert properties["transaction.state.log.min.isr"] == min_isr


def test_every_node_knows_every_voter_and_shares_one_cluster_id(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, [19101, 19102, 19103], cache_dir=tmp_path)
    seats = [cluster.node(node_id).quorum for node_id in cluster.node_ids]
    assert cluster.node_ids == [1, 2, 3]
    assert cluster.bootstrap == "127.0.0.1:19101,127.0.0.1:19102,127.0.0.1:19103"
    assert len({seat.cluster_id for seat in seats if seat is not None}) == 1
    voters = {node.node_id: node.controller_port for node in cluster.layout.nodes}
    assert all(seat is not None and dict(seat.voters) == voters for seat in seats)
    assert not set(voters.values()) & {19101, 19102, 19103}


def test_a_cluster_refuses_ports_other_than_it_was_created_with(tmp_path: Path) -> None:
    created = LocalCluster(tmp_path, [19101, 19102, 19103], cache_dir=tmp_path)
    (tmp_path / LAYOUT_FILE).write_text(created.layout.model_dump_json())  # as start() does
    with pytest.raises(BrokerError, match=r"ports \[19101, 19102, 19103\], not \[19101, 19102\]"):
        LocalCluster(tmp_path, [19101, 19102], cache_dir=tmp_path)


def test_a_secured_cluster_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="STEPLOG_BROKER_SECURE"):
        LocalCluster.from_settings(load_settings(broker_secure=True, data_dir=tmp_path), 3)
