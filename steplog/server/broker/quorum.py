"""Which node is the KRaft cluster's active controller, asked through any broker.

In KRaft a broker's Metadata and DescribeCluster answers name a random live broker as the
"controller" (the one that forwards controller requests, KIP-590), not the active controller.
The leader of the metadata log `__cluster_metadata` is: DescribeQuorum (KIP-595) says who,
and brokers forward it to the controllers. aiokafka lacks it, so it is written here from the
protocol's schema (v0) with aiokafka's own types, as security.py does for SCRAM.
"""

from __future__ import annotations

from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Int64,
    Schema,
    TaggedFields,
)

from steplog.errors import BrokerError
from steplog.kafka import PLAINTEXT, KafkaSecurity

_METADATA_TOPIC = "__cluster_metadata"
_REPLICA_STATE = (("replica_id", Int32), ("log_end_offset", Int64), ("tags", TaggedFields))


# aiokafka's protocol classes are untyped (Any) to mypy: hence the ignores on subclassing them.
class _DescribeQuorumResponse(Response):  # type: ignore[misc]
    API_KEY = 55
    API_VERSION = 0
    SCHEMA = Schema(
        ("error_code", Int16),
        ("topics", CompactArray(
            ("topic_name", CompactString("utf-8")),
            ("partitions", CompactArray(
                ("partition_index", Int32), ("error_code", Int16), ("leader_id", Int32),
                ("leader_epoch", Int32), ("high_watermark", Int64),
                ("current_voters", CompactArray(*_REPLICA_STATE)),
                ("observers", CompactArray(*_REPLICA_STATE)),
                ("tags", TaggedFields),
            )),
            ("tags", TaggedFields),
        )),
        ("tags", TaggedFields),
    )


class _DescribeQuorumRequestV0(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 55
    API_VERSION = 0
    RESPONSE_TYPE = _DescribeQuorumResponse
    SCHEMA = Schema(
        ("topics", CompactArray(
            ("topic_name", CompactString("utf-8")),
            ("partitions", CompactArray(("partition_index", Int32), ("tags", TaggedFields))),
            ("tags", TaggedFields),
        )),
        ("tags", TaggedFields),
    )


class _DescribeQuorum(Request[_DescribeQuorumRequestV0]):  # type: ignore[misc]
    API_KEY = 55

    def build(
        self, request_struct_class: type[_DescribeQuorumRequestV0]
    ) -> _DescribeQuorumRequestV0:
        return request_struct_class([(_METADATA_TOPIC, [(0, {})], {})], {})


async def active_controller(bootstrap: str, security: KafkaSecurity = PLAINTEXT) -> int:
    """The node id of the active controller (the metadata log's leader) of the cluster at
    `bootstrap`; BrokerError when the quorum has no leader or the broker refuses to say."""
    client = AIOKafkaClient(
        bootstrap_servers=bootstrap, client_id="steplog-quorum", **security.client_options()
    )
    await client.bootstrap()
    try:
        response = await client.send(client.get_random_node(), _DescribeQuorum())
    finally:
        await client.close()
    if response.error_code:
        raise BrokerError(f"{bootstrap}: DescribeQuorum failed with error {response.error_code}")
    for _topic, partitions, _tags in response.topics:
        for _index, error_code, leader_id, *_rest in partitions:
            if error_code or leader_id < 0:
                raise BrokerError(
                    f"{bootstrap}: the metadata quorum has no leader (error {error_code})"
                )
            return int(leader_id)
    raise BrokerError(f"{bootstrap}: DescribeQuorum answered without the metadata partition")
