"""The C heap's free pages, given back to the system.

glibc keeps what numpy and torch free (many mid-sized arrays: the training batches, the
prefetch thread's in its own arena) for reuse; the resident set keeps it too, and the next
stage's or pass's peak is built on top of it. ``malloc_trim`` returns the free pages of
every arena.
"""
from __future__ import annotations

import ctypes
import sys


def return_freed_memory() -> None:
    """Give the heap's free pages back to the system (glibc's ``malloc_trim``).

    Measured: at 2M interactions the freed batches held 0.10-0.28 GB of resident memory at
    each stage's start (27 % at the embedding stage). A no-op where the C library has no
    such call."""
    if not sys.platform.startswith("linux"):
        return
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)
