"""A replay fold process hands its batches to the parent from a thread (steplog/server/replay_fold.py)."""

from __future__ import annotations

import multiprocessing
import threading

import pytest

from steplog.server.replay_fold import _Handover


def test_messages_arrive_in_order_and_close_waits_for_the_last() -> None:
    receiver, sender = multiprocessing.Pipe(duplex=False)
    handover = _Handover(sender)
    received: list[object] = []
    reader = threading.Thread(target=lambda: received.extend(receiver.recv() for _ in range(5)))
    reader.start()
    for n in range(5):
        handover.send(("rows", b"x" * 200_000, n))  # larger than the pipe holds
    handover.close()
    reader.join(10)
    assert [message[2] for message in received] == [0, 1, 2, 3, 4]  # type: ignore[index]


def test_a_parent_gone_fails_the_next_send_and_close_does_not_hang() -> None:
    receiver, sender = multiprocessing.Pipe(duplex=False)
    receiver.close()
    handover = _Handover(sender)
    handover.send(("rows", b"x", 1))  # queued: the thread finds the pipe broken
    with pytest.raises(OSError):
        for n in range(3):  # one of these sees the thread's error
            handover.send(("rows", b"x", n))
        handover.close()
    handover.close(raising=False)
