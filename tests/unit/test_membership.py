"""The processors' identity in their consumer groups (processors/membership.py)."""

from __future__ import annotations

from pathlib import Path

from steplog.processors.membership import claim_membership, client_id_for, health_port_of


def test_the_client_id_carries_the_health_port_for_status_to_find() -> None:
    assert health_port_of(client_id_for(8124)) == 8124
    assert health_port_of(client_id_for(0)) is None
    assert health_port_of("aiokafka-0.14.0") is None
    assert health_port_of("someone-else-health-80") is None


def test_one_process_per_data_dir_is_a_static_member_a_second_is_dynamic(tmp_path: Path) -> None:
    first = claim_membership(tmp_path / "a", 0)
    assert first.instance_id is not None and str((tmp_path / "a").resolve()) in first.instance_id
    # The lock is per open file: a second claim on the same dir (here, in this process) loses.
    assert claim_membership(tmp_path / "a", 0).instance_id is None
    assert claim_membership(tmp_path / "b", 0).instance_id not in (None, first.instance_id)
