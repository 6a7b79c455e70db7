"""Child processes that must not outlive their parent (the store process, replay's folds)."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from typing import Final

__all__ = ["die_with_parent"]

log = logging.getLogger("steplog")

_PR_SET_PDEATHSIG: Final = 1  # linux/prctl.h


def die_with_parent(parent: int) -> None:
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
