"""The figures of a ``postgres`` (logical) DR drill, judged against targets and recorded as a ``drill`` event.

The platform drill (:mod:`seedvault.ops.platform_drill`) measures and records its own; this gives the narrower
drill of one logical backup the same shape, so the status view and the artifacts read both alike:

* RTO: seconds from the drill's start until the restored database was checked (verify + restore + checks);
* RPO: the age of the restored backup when the restore finished (what a real restore at that moment loses).
  A nightly logical backup is up to a day old, so its default target is a day plus an hour.

The event (FORMAT.md 7.4) holds integer milliseconds like the platform drill's, plus ``mode = "postgres"``,
the backup's kind and label (the status view files the drill under them) and ``missed``.
"""

from __future__ import annotations

from typing import Any

from seedvault import audit
from seedvault.repository import Repository

OPERATION = "drill"
RTO_TARGET_S = 3600.0
RPO_TARGET_S = 25 * 3600.0  # the daily logical backup's interval plus an hour


def judge(rto: float, rpo: float, rto_target: float, rpo_target: float) -> dict[str, Any]:
    """``{"rto": {...}, "rpo": {...}, "missed": [...], "passed": bool}`` with seconds, targets and met flags."""
    out: dict[str, Any] = {
        "rto": {"seconds": round(rto, 3), "target_seconds": rto_target, "met": rto <= rto_target},
        "rpo": {"seconds": round(rpo, 3), "target_seconds": rpo_target, "met": rpo <= rpo_target},
    }
    out["missed"] = [w for w in ("rto", "rpo") if not out[w]["met"]]
    out["passed"] = not out["missed"]
    return out


def record(repo: Repository, backup_id: str, body: dict, figures: dict[str, Any]) -> audit.Event | None:
    """The ``drill`` event of a logical drill (never raises: auditing must not fail the drill)."""

    def ms(s: float | None) -> int | None:
        return None if s is None else int(round(s * 1000))

    rto, rpo = figures["rto"], figures["rpo"]
    details = {
        "mode": "postgres", "kind": body.get("kind"), "label": (body.get("labels") or {}).get("name"),
        "rto_ms": ms(rto["seconds"]), "rto_target_ms": ms(rto["target_seconds"]),
        "rpo_ms": ms(rpo["seconds"]), "rpo_target_ms": ms(rpo["target_seconds"]), "missed": figures["missed"],
    }  # fmt: skip
    if figures["missed"]:
        details["error"] = "; ".join(
            f"{w.upper()} {figures[w]['seconds']:.3f} s missed the target of {figures[w]['target_seconds']:g} s"
            for w in figures["missed"]
        )
    result = "ok" if figures["passed"] else "failed"
    return audit.record(repo, OPERATION, backup_ids=[backup_id], result=result, details=details)
