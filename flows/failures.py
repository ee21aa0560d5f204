"""What happens when a seedvault flow fails: an operator-readable error, exactly one message, a missed-run alert.

* :func:`operator_error`: the engine's one-line message (with its hint) becomes the flow's exception, so the
  run's state message, the UI and the notification all read like the CLI's ``seedvault: error: ...``.
* :func:`notify_failure`: the ``on_failure`` and ``on_crashed`` hook of every flow. It is the *only* path a
  failure message takes (decided per failure kind, and proven by ``tests/prefect/test_notify_real_server.py``):

  - **Failed** (the flow raised): the hook runs in the flow's process, immediately, once after the last retry.
  - **Crashed**: the hook runs in the flow's process when the engine sees the crash (a signal, an interrupt);
    when the process is killed outright (SIGKILL, OOM) the worker or ``serve`` runner marks the run Crashed and
    runs the same hook itself. Prefect 3.9 runs it there only when *it* proposed the Crashed state, so one
    crash is one message.
  - No server automation is created for failures: its trigger would send a second message, and for runs the
    scheduler creates (which have no ``Scheduled`` event) it holds the event for Prefect's 15-minute look-back.
* :func:`notify_recovered`: the ``on_completion`` hook: the first success of a deployment after a failed or
  crashed run sends one "recovered" message.
* :func:`create_missed_backup_automation`: a backup that did not happen runs no hook, so this one kind is a
  server-side *proactive* automation: no completed run of the deployment within its period plus a margin.

The block is named ``"<block-type-slug>/<block-name>"`` by the flow's ``notify_block`` parameter or by
``SEEDVAULT_NOTIFY_BLOCK`` (workers: set it in the worker's environment). What a message says is
:mod:`flows.messages`; it is built from names, the state message and links only, never from block fields or
parameter values other than names, and the engine never puts secrets into error messages.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from prefect.automations import Automation
from prefect.blocks.core import Block
from prefect.events.actions import SendNotification
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.logging import get_logger

from flows.messages import (
    Message,
    failure_message,
    missed_message,
    recovered_message,
    status_alert_message,
    store_of,
)
from seedvault.errors import ConfigError, SeedvaultError

NOTIFY_ENV = "SEEDVAULT_NOTIFY_BLOCK"
MISSED_PREFIX = "seedvault-missed-"

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


def notify_failure(flow: Any, flow_run: Any, state: Any) -> None:
    """Flow hook (``on_failure``, ``on_crashed``): one message through the configured notification block.

    A delivery problem is logged (type only: an exception text can carry a webhook URL) and never masks the
    flow's own failure.
    """
    params = dict(getattr(flow_run, "parameters", None) or {})
    name = notify_block_name(params)
    if not name:
        return
    store = store_of(flow.name, params)
    message = failure_message(
        flow_name=flow.name,
        run_name=flow_run.name,
        state_name=state.name,
        reason=state.message,
        database=_database(flow.name, params),
        deployment=_deployment_name(flow.name, flow_run),
        run_url=_run_url(flow_run),
        store=store,
    )
    _send(name, message)


def notify_recovered(flow: Any, flow_run: Any, state: Any) -> None:
    """Flow hook (``on_completion``): one "recovered" message when the deployment's previous run had failed.

    Only runs of a deployment count ("the same deployment"): the previous finished run of the deployment
    (by end time) decides. The next success after that one sees a Completed run before it and says nothing.
    """
    params = dict(getattr(flow_run, "parameters", None) or {})
    name = notify_block_name(params)
    deployment_id = getattr(flow_run, "deployment_id", None)
    if not name or deployment_id is None:
        return
    try:
        previous = _previous_finished_run(flow_run)
    except Exception as exc:  # noqa: BLE001 - a hook must not change the run's outcome
        log.warning("could not read the deployment's previous run: %s", type(exc).__name__)
        return
    if previous is None or previous.state is None or previous.state.type.value not in ("FAILED", "CRASHED"):
        return
    message = recovered_message(
        flow_name=flow.name,
        run_name=flow_run.name,
        deployment=_deployment_name(flow.name, flow_run) or str(deployment_id),
        failed_run=previous.name,
        database=_database(flow.name, params),
        run_url=_run_url(flow_run),
        store=store_of(flow.name, params),
    )
    _send(name, message)


REMINDED_KINDS = ("key-age",)


def remind_status_alerts(repo: Any, settings: Any, notify_block: str | None, repository_url: str) -> int:
    """One message per standing status alert of :data:`REMINDED_KINDS` (the master key's age); returns how many.

    Called by the daily ``prune`` run, so an overdue rotation is said once a day, not by every run (the
    5-minute freshness check would send 288 a day). Other alert kinds have their own message already (a failed
    run, a missed schedule). A status that cannot be computed is a warning, never a failed prune.
    """
    from prefect.context import get_run_context

    from seedvault.ops.status import compute_status

    name = notify_block or os.environ.get(NOTIFY_ENV)
    if not name:
        return 0
    try:
        report = compute_status(repo, settings)
    except SeedvaultError as exc:
        log.warning("the status alerts were not checked: %s", exc.one_line())
        return 0
    run = get_run_context().flow_run  # type: ignore[union-attr]
    sent = 0
    for alert in report.alerts:
        if alert.kind in REMINDED_KINDS:
            _send(name, status_alert_message(kind=alert.kind, alert_subject=alert.subject, text=alert.message,
                                             repository=repository_url, deployment=_deployment_name("prune", run),
                                             run_url=_run_url(run)))  # fmt: skip
            sent += 1
    return sent


def _send(block_name: str, message: Message) -> None:
    try:
        Block.load(block_name).notify(body=message.body, subject=message.subject)
    except Exception as exc:  # noqa: BLE001 - a hook must not replace the flow's failure
        log.error("could not send the notification through block %s: %s", block_name, type(exc).__name__)


def _previous_finished_run(flow_run: Any) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[flow_run.deployment_id])),
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(not_any_=[flow_run.id]),
                state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType.COMPLETED, StateType.FAILED, StateType.CRASHED])
                ),
            ),
            sort=FlowRunSort.END_TIME_DESC,
            limit=1,
        )
    return runs[0] if runs else None


def _deployment_name(flow_name: str, flow_run: Any) -> str | None:
    deployment_id = getattr(flow_run, "deployment_id", None)
    if deployment_id is None:
        return None
    try:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            return f"{flow_name}/{client.read_deployment(deployment_id).name}"
    except Exception:  # noqa: BLE001 - the id still says which deployment
        return f"{flow_name}/deployment {deployment_id}"


def _run_url(flow_run: Any) -> str | None:
    try:
        from prefect.utilities.urls import url_for

        return url_for("flow-run", obj_id=flow_run.id)
    except Exception:  # noqa: BLE001 - a message without a link is better than none
        return None


def _database(flow_name: str, params: dict[str, Any]) -> str | None:
    """The database the run was about: its parameter, else the target block's default (a name, not a secret)."""
    for key in ("database", "neo4j_database"):
        if params.get(key):
            return str(params[key])
    target = params.get("target")
    if not target or flow_name in ("prune", "verify-repository"):
        return None
    try:
        if "neo4j" in flow_name:
            from blocks import Neo4jTarget

            return Neo4jTarget.load(target).database
        from blocks import PostgresTarget

        return PostgresTarget.load(target).database
    except Exception:  # noqa: BLE001 - the block may be what failed to load
        return None


def create_missed_backup_automation(
    notify_block: str, deployment: str, *, period_s: float, margin_s: float
) -> Automation:
    """Create (or replace) the proactive automation for ``deployment`` ("flow/name"): no Completed run within
    ``period_s + margin_s`` seconds sends one message (and one more per further empty window).

    Nothing runs when a schedule is missed (a dead worker, a paused pool), so no hook can report it; this is the
    one alert kind made on the server. The count is of Completed runs: failed runs have sent their own message.
    """
    from prefect.client.orchestration import get_client
    from prefect.utilities.urls import url_for

    block_id = _saved_block_id(notify_block)
    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name(deployment)
    name = missed_automation_name(deployment)
    _delete_automation(name)
    message = missed_message(
        deployment=deployment,
        period_s=period_s,
        margin_s=margin_s,
        ui_url=_safe(lambda: url_for("deployment", obj_id=dep.id)),
    )
    return Automation(
        name=name,
        description=f"seedvault: no completed run of {deployment} within its period plus {margin_s:g} s",
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.id": f"prefect.deployment.{dep.id}"},
            expect={"prefect.flow-run.Completed"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=period_s + margin_s),
        ),
        actions=[SendNotification(block_document_id=block_id, subject=message.subject, body=message.body)],
    ).create()


def delete_missed_backup_automations(keep: set[str] | None = None) -> list[str]:
    """Delete seedvault's missed-backup automations not named in ``keep`` (stores no longer configured)."""
    from prefect.client.orchestration import get_client

    deleted = []
    with get_client(sync_client=True) as client:
        for automation in client.read_automations():
            if automation.name.startswith(MISSED_PREFIX) and automation.name not in (keep or set()):
                client.delete_automation(automation.id)
                deleted.append(automation.name)
    return deleted


def missed_automation_name(deployment: str) -> str:
    return MISSED_PREFIX + deployment.replace("/", "--")


def _saved_block_id(notify_block: str) -> Any:
    block = Block.load(notify_block)
    block_id = getattr(block, "_block_document_id", None)
    if block_id is None:
        raise ConfigError(f"notification block {notify_block} is not saved on this Prefect server")
    return block_id


def _delete_automation(name: str) -> None:
    try:
        Automation.read(name=name).delete()
    except ValueError:
        pass  # none yet


def _safe(fn: Any) -> Any:
    try:
        return fn()
    except Exception:  # noqa: BLE001
        return None
