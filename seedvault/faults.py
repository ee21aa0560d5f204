"""Named points in long operations, for crash testing and tracing.

A backup passes through phases (key object written, data streaming, multipart part uploaded, manifest
being written...). :func:`reached` records the phase in the file named by ``SEEDVAULT_FAULT_TRACE`` and,
when ``SEEDVAULT_FAULT_KILL_AT`` names that phase (or ``<phase>:<n>``, its n-th time), kills the process with
SIGKILL at exactly that point (``SEEDVAULT_FAULT_FAIL_AT``: raises :class:`InjectedFailure` there).
That is how the crash tests prove that a backup killed in any phase is never listed as complete and that
``cleanup`` restores the repository. Both variables are unset in production, where this costs one dict
lookup per call.
"""

from __future__ import annotations

import os
import signal

TRACE_ENV = "SEEDVAULT_FAULT_TRACE"
KILL_ENV = "SEEDVAULT_FAULT_KILL_AT"
FAIL_ENV = "SEEDVAULT_FAULT_FAIL_AT"  # raise InjectedFailure there instead (an operation failing midway)
CORRUPT_ENV = "SEEDVAULT_FAULT_CORRUPT_AT"  # corrupt() answers True there: the caller damages what it wrote


class InjectedFailure(RuntimeError):
    """Raised at the phase ``SEEDVAULT_FAULT_FAIL_AT`` names: an unexpected failure, as a bug would be."""


def reached(phase: str) -> None:
    """Mark that the running operation reached ``phase``; die here if a test asked for it."""
    trace = os.environ.get(TRACE_ENV)
    kill_at = os.environ.get(KILL_ENV)
    fail_at = os.environ.get(FAIL_ENV)
    if not trace and not kill_at and not fail_at:
        return
    if fail_at == phase:
        raise InjectedFailure(f"injected failure at {phase}")
    if trace:
        with open(trace, "a", encoding="ascii") as fh:
            fh.write(phase + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    if kill_at == phase:
        os.kill(os.getpid(), signal.SIGKILL)
    if kill_at and kill_at.startswith(phase + ":"):  # "<phase>:<n>": the n-th time this process reaches it
        _COUNTS[phase] = _COUNTS.get(phase, 0) + 1
        if str(_COUNTS[phase]) == kill_at[len(phase) + 1 :]:
            os.kill(os.getpid(), signal.SIGKILL)


_COUNTS: dict[str, int] = {}


def corrupt(phase: str) -> bool:
    """Whether the caller should damage what it just stored at ``phase`` (a bad copy arriving, for tests).

    ``SEEDVAULT_FAULT_CORRUPT_AT`` = ``<phase>`` (every time) or ``<phase>:<n>`` (the n-th time only).
    """
    at = os.environ.get(CORRUPT_ENV)
    if not at:
        return False
    if at == phase:
        return True
    if at.startswith(phase + ":"):
        _CORRUPTS[phase] = _CORRUPTS.get(phase, 0) + 1
        return str(_CORRUPTS[phase]) == at[len(phase) + 1 :]
    return False


_CORRUPTS: dict[str, int] = {}
