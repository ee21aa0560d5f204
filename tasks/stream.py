"""The four streaming stages of one backup object as concurrently submitted Prefect tasks.

``read`` (the dump's stdout) -> ``compress`` -> ``encrypt`` -> ``upload`` run at the same time, joined by the
engine's bounded :class:`~seedvault.stream.pipe.Pipe` objects, so memory stays flat and each stage shows up
in the UI with its own bytes and seconds. The rules these tasks follow, and why:

* ``retries=0`` on every stage: a retried stage would resume the middle of a stream that its neighbours
  already moved past, and complete with silently wrong data. The *whole* stream is retried instead, by the
  subflow that calls :func:`run_object_as_tasks` again with a fresh plan (fresh pipes, a fresh dump).
* ``NO_CACHE`` and :func:`~prefect.utilities.annotations.quote`: pipes, plans and readers are neither hashed
  nor traversed by Prefect, and never recorded as parameters.
* Readers reach the read task only as task arguments, never as *flow* parameters: Prefect reads from a
  file-like flow parameter while recording it (seen here: the first 204 bytes of a stream were gone).
* A stage that fails breaks its pipes both ways, so its neighbours fail instead of blocking; if a stage
  fails *outside* its function (Prefect could not start it), :func:`run_object_as_tasks` breaks every pipe.
"""

from __future__ import annotations

import time
from typing import Any, BinaryIO

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, as_completed
from prefect.utilities.annotations import quote

from seedvault.errors import SeedvaultError
from seedvault.stream.pipe import Pipe, PipeBroken
from seedvault.writer import BackupWriter, ObjectPlan, ObjectStats, root_cause

STAGES = ("read", "compress", "encrypt", "upload")
_STAGE_TASK = {"retries": 0, "cache_policy": NO_CACHE, "persist_result": False}


def _report(plan: ObjectPlan, step: str, nbytes: int, started: float) -> dict[str, Any]:
    busy = getattr(plan.stats.times, step)
    wall = time.perf_counter() - started
    get_run_logger().info("%s %s: %d bytes, %.3f s busy, %.3f s wall", step, plan.name, nbytes, busy, wall)
    return {"object": plan.name, "step": step, "bytes": nbytes, "seconds": round(busy, 3), "wall": round(wall, 3)}


@task(name="read", task_run_name="read-{plan.name}", **_STAGE_TASK)
def read_stage(plan: ObjectPlan, reader: BinaryIO, out: Pipe) -> dict[str, Any]:
    """Pull the source stream (pg_dump's stdout) into the first pipe."""
    started = time.perf_counter()
    return _report(plan, "read", plan.read(reader, out), started)


@task(name="compress", task_run_name="compress-{plan.name}", **_STAGE_TASK)
def compress_stage(plan: ObjectPlan, inp: Pipe, out: Pipe) -> dict[str, Any]:
    started = time.perf_counter()
    return _report(plan, "compress", plan.compress(inp, out), started)


@task(name="encrypt", task_run_name="encrypt-{plan.name}", **_STAGE_TASK)
def encrypt_stage(plan: ObjectPlan, inp: Pipe, out: Pipe) -> dict[str, Any]:
    started = time.perf_counter()
    plan.encrypt(inp, out)
    return _report(plan, "encrypt", out.bytes, started)


@task(name="upload", task_run_name="upload-{plan.name}", **_STAGE_TASK)
def upload_stage(plan: ObjectPlan, inp: Pipe) -> dict[str, Any]:
    """SHA-256 and write to storage; the object becomes visible only after a clean end of stream."""
    started = time.perf_counter()
    stats = plan.upload(inp)
    out = _report(plan, "upload", stats.stored_size, started)
    out["hash_seconds"] = round(stats.times.hash, 3)
    return out


def run_object_as_tasks(backup: BackupWriter, name: str, reader: BinaryIO) -> ObjectStats:
    """Stream ``reader`` into object ``name`` with one task per stage (the ``run_object`` hook of the engine).

    Must be called inside a flow. Raises the error that started a failure (not the ``PipeBroken`` echoes).
    """
    plan = backup.plan_object(name)
    raw, packed, sealed = plan.pipes()
    pipes = (raw, packed, sealed)
    # Consumers first, so every pipe has its reader running by the time data flows.
    futures: list[PrefectFuture] = [
        upload_stage.submit(quote(plan), quote(sealed)),
        encrypt_stage.submit(quote(plan), quote(packed), quote(sealed)),
        compress_stage.submit(quote(plan), quote(raw), quote(packed)),
        read_stage.submit(quote(plan), quote(reader), quote(raw)),
    ]
    outcomes: dict[int, Any] = {}
    for fut in as_completed(futures):
        outcome = fut.result(raise_on_failure=False)
        outcomes[id(fut)] = outcome
        if isinstance(outcome, BaseException):
            _break_pipes(pipes, outcome)
    # In pipeline order (read first): the first error that is not a PipeBroken echo is the cause.
    errors = [outcomes[id(f)] for f in reversed(futures) if isinstance(outcomes[id(f)], BaseException)]
    if errors:
        raise root_cause(errors)
    return backup.finish_object(plan)


def _break_pipes(pipes: tuple[Pipe, ...], exc: BaseException) -> None:
    """Unblock every stage still waiting on a pipe (a no-op on pipes already closed cleanly)."""
    # A stage still reading or writing may see this echo instead of the original error (the abandon drains what
    # the failing stage put): so the echo names the cause. Seedvault messages are secret-free by contract;
    # anything else is named by its type only.
    detail = f": {exc.one_line()}" if isinstance(exc, SeedvaultError) else ""
    cause = exc if isinstance(exc, PipeBroken) else PipeBroken(f"a stage failed: {type(exc).__name__}{detail}")
    for pipe in pipes:
        pipe.fail(cause)
        pipe.abandon(cause)
