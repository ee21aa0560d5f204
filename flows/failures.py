"""What happens when a seedvault flow fails: an operator-readable error, a notification, an automation.

* :func:`operator_error`: the engine's one-line message (with its hint) becomes the flow's exception, so the
  run's state message, the UI and the notification all read like the CLI's ``seedvault: error: ...``.
* :func:`notify_failure`: an ``on_failure``/``on_crashed`` hook sending through a saved Prefect notification
  block, named ``"<block-type-slug>/<block-name>"`` by the flow's ``notify_block`` parameter or by
  ``SEEDVAULT_NOTIFY_BLOCK``. It runs in the flow's process, so it cannot report a process that was killed.
* :func:`create_failure_automation`: the robust path, a server-side Automation that notifies when a
  seedvault flow run enters Failed or Crashed, whatever happened to the process.

Notification text is built from the flow name, the run name and the state message only; the engine never
puts secrets into error messages, and no parameter or block field is copied into the text.
"""

from __future__ import annotations

import os
from typing import Any

from prefect.automations import Automation
from prefect.blocks.core import Block
from prefect.events.actions import SendNotification
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.logging import get_logger

from seedvault.errors import ConfigError, SeedvaultError

NOTIFY_ENV = "SEEDVAULT_NOTIFY_BLOCK"
SEEDVAULT_FLOWS = (
    "backup-postgres",
    "backup-postgres-base",
    "restore-postgres",
    "dr-drill",
    "check-wal-freshness",
    "backup-neo4j",
    "restore-neo4j",
    "backup-platform",
    "restore-platform",
)
AUTOMATION_NAME = "seedvault-flow-failed"

log = get_logger("seedvault.flows")


def load_block(cls: type[Any], name: str) -> Any:
    """``cls.load(name)``, a missing or unreadable block as a ConfigError (one line, a failure artifact, a message).

    Why: Prefect raises a bare ValueError ("Unable to find block document named ..."); loaded outside the flow's
    ``try`` it failed the run with no failure artifact and a traceback for a message.
    """
    try:
        return cls.load(name)
    except ValueError as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"Prefect block {name!r} ({cls.get_block_type_slug()}) cannot be loaded: {detail}",
            hint="create it (deployments/README.md, 'Blocks') or fix the deployment's parameter",
        ) from None


def operator_error(exc: SeedvaultError) -> SeedvaultError:
    """The same error class (and exit code) carrying the one-line operator message, hint included."""
    return type(exc)(exc.one_line())


def notify_block_name(parameters: dict[str, Any] | None) -> str | None:
    return (parameters or {}).get("notify_block") or os.environ.get(NOTIFY_ENV) or None


def failure_text(flow_name: str, run_name: str, state_name: str, message: str | None) -> tuple[str, str]:
    """(subject, body) of a failure notification."""
    subject = f"seedvault: {flow_name} {state_name.lower()}"
    return subject, f"{flow_name} run {run_name} {state_name}: {message or 'no message'}"


def notify_failure(flow: Any, flow_run: Any, state: Any) -> None:
    """Flow hook: send the failure through the configured notification block (if any).

    A delivery problem is logged (type only: an exception text can carry a webhook URL) and never masks the
    flow's own failure.
    """
    name = notify_block_name(getattr(flow_run, "parameters", None))
    if not name:
        return
    subject, body = failure_text(flow.name, flow_run.name, state.name, state.message)
    try:
        Block.load(name).notify(body=body, subject=subject)
    except Exception as exc:  # noqa: BLE001 - a hook must not replace the flow's failure
        log.error("could not send the failure notification through block %s: %s", name, type(exc).__name__)


def create_failure_automation(
    notify_block: str, *, name: str = AUTOMATION_NAME, flows: tuple[str, ...] = SEEDVAULT_FLOWS
) -> Automation:
    """Create (or replace) the server-side automation notifying on Failed/Crashed seedvault flow runs.

    ``notify_block`` is ``"<block-type-slug>/<block-name>"`` of a saved notification block. Only the
    top-level seedvault flows match (not the stream subflow, whose failures the parent reports).
    """
    block = Block.load(notify_block)
    block_id = getattr(block, "_block_document_id", None)
    if block_id is None:
        raise ValueError(f"notification block {notify_block} is not saved on this Prefect server")
    try:
        Automation.read(name=name).delete()
    except ValueError:
        pass  # none yet
    return Automation(
        name=name,
        description="seedvault: notify when a backup, restore, DR drill or WAL freshness check fails",
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.role": "flow", "prefect.resource.name": list(flows)},
            expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
            posture=Posture.Reactive,
            threshold=1,
        ),
        actions=[
            SendNotification(
                block_document_id=block_id,
                subject="seedvault: {{ flow.name }} {{ flow_run.state.name }}",
                body="{{ flow.name }} run {{ flow_run.name }} {{ flow_run.state.name }}: {{ flow_run.state.message }}",
            )
        ],
    ).create()
