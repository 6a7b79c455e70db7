"""What the processors' store process and replay's fold processes do first, as children."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from typing import Final

from steplog.server.gc_tuning import tune_gc_for_batches

__all__ = ["settle_child"]

log = logging.getLogger("steplog")

_PR_SET_PDEATHSIG: Final = 1  # linux/prctl.h


def settle_child(parent: int) -> None:
    """The start of a child's life: Ctrl-C reaches the whole process group, but the parent
    decides when its child stops (after its last write, or when replay is over), so the child
    ignores SIGINT; it dies with its parent (`_die_with_parent`); its collector is tuned for
    batches, as its parent's (steplog/server/gc_tuning.py)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(parent)
    tune_gc_for_batches()


def _die_with_parent(parent: int) -> None:
    """On Linux, have the kernel SIGKILL this process as soon as its parent dies (SIGKILLed
    itself, say), so that nothing it holds (the chDB path, a share of the CPU) outlives the
    parent. Elsewhere the child notices its pipe's EOF instead, after the work in hand. The
    signal follows the parent *thread* that started the child: start it from the main thread.
    """
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed (errno %d): this process outlives a killed "
                    "parent until its work in hand ends", ctypes.get_errno())
    if os.getppid() != parent:  # the parent died before the prctl took effect
        os._exit(0)
