"""``seedvault status``: what the repository says about itself, per store and database, and what is alerting.

Computed from the repository only (no Prefect, no database connection), so cron and monitoring can run it:

* the catalog (:class:`seedvault.catalog.Catalog`): per kind and name label, the last good backup (its age and
  size), the trend of the last :attr:`StatusPolicy.size_window` stored sizes and the bytes the group stores;
* the audit log (:mod:`seedvault.audit`): the last verification and the last DR drill naming a backup of the
  group (a ``drill`` event holds RTO, RPO and their targets, for both drill modes), and when the master key in
  use was first used;
* one listing of the WAL root: per system id, when the newest WAL object was stored;
* :func:`seedvault.ops.usage.usage`: repository bytes and the estimated monthly cost.

Alert kinds (stable names, ``--json`` carries them; any alert makes ``seedvault status`` exit 65):

* ``stale-backup``: no backup of a kind (or ``<kind>:<label>``) within its period plus ``stale_margin``
  (``[status.periods]``; defaults in :data:`DEFAULT_PERIODS`, ``put`` has none; ``"off"`` disables one);
  a period configured for ``<kind>:<label>`` with no backup at all alerts too.
* ``size-anomaly``: the newest backup's stored size is outside ``median * (1 ± size_band)`` of the previous
  ``size_window`` backups of the same kind and label (needs :data:`MIN_HISTORY` of them).
* ``key-age``: the master key in use was first used more than ``key_max_age`` ago (rotation policy, 90 days):
  first use is the ``key-rotate`` event that introduced it, else the oldest backup written under it.
* ``drill-failed``, ``verify-failed``: the newest drill or full verification of a group failed.
* ``wal-stale``: only with ``wal_max_age`` set (an idle server archives nothing, so off by default; the real
  check is ``seedvault check wal-freshness``): the newest WAL object of a system is older than that.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from seedvault import audit
from seedvault.catalog import Catalog
from seedvault.config import Settings, parse_duration
from seedvault.errors import ConfigError, SeedvaultError, SizeAnomaly, StatusAlerting
from seedvault.format import layout
from seedvault.repository import Repository
from seedvault.units import human_bytes, human_seconds

DAY = 86400.0
DEFAULT_PERIODS: dict[str, float] = {  # the deployments' schedules (deployments/definitions.py)
    "postgres-logical": DAY,
    "postgres-physical": DAY,
    "neo4j": DAY,
    "platform": DAY,
}
MIN_HISTORY = 3
ALERT_KINDS = ("stale-backup", "size-anomaly", "key-age", "drill-failed", "verify-failed", "wal-stale")
WAL_ROOT = layout.WAL
DRILL = "drill"


@dataclass
class StatusPolicy:
    size_band: float = 0.5  # +-50 % around the median
    size_window: int = 7
    key_max_age: float = 90 * DAY
    stale_margin: float = 2 * 3600.0
    wal_max_age: float | None = None
    # `seedvault replicate --status` alerts (replication-lag) when the oldest thing the replica lacks is older.
    replication_max_lag: float = 2 * 3600.0
    periods: dict[str, float | None] = field(default_factory=lambda: dict(DEFAULT_PERIODS))

    @classmethod
    def from_settings(cls, settings: Settings | None) -> StatusPolicy:
        table: Any = settings.status if settings is not None else None
        if isinstance(table, str):
            try:
                table = json.loads(table)
            except ValueError:
                raise ConfigError("SEEDVAULT_STATUS is not valid JSON (an object of status settings)") from None
        table = dict(table or {})
        known = {"size_band", "size_window", "key_max_age", "stale_margin", "wal_max_age", "replication_max_lag"}
        unknown = set(table) - known - {"periods"}
        if unknown:
            raise ConfigError(f"status: unknown setting(s) {', '.join(sorted(unknown))}")
        out = cls()
        try:
            out.size_band = float(table.get("size_band", out.size_band))
            out.size_window = int(table.get("size_window", out.size_window))
        except (TypeError, ValueError):
            raise ConfigError("status: size_band must be a number, size_window an integer") from None
        if not 0 < out.size_band < 10 or out.size_window < MIN_HISTORY:
            raise ConfigError(f"status: size_band must be in (0, 10), size_window at least {MIN_HISTORY}")
        for name in ("key_max_age", "stale_margin", "wal_max_age", "replication_max_lag"):
            if table.get(name) is not None:
                setattr(out, name, parse_duration(str(table[name])))
        for name, value in dict(table.get("periods") or {}).items():
            out.periods[str(name)] = None if str(value).lower() == "off" else parse_duration(str(value))
        return out

    def period(self, kind: str, label: str) -> float | None:
        return self.periods.get(f"{kind}:{label}", self.periods.get(kind))


@dataclass(frozen=True)
class Alert:
    kind: str  # one of ALERT_KINDS
    subject: str  # "<kind>:<label>", "key <id>", "wal <system id>"
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "subject": self.subject, "message": self.message}


def _time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return audit.parse_time(text)
    except ValueError:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _iso(t: datetime | None) -> str | None:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ") if t else None


# --- pure alert rules (the notification layer calls these too) -------------------------------------------
def size_anomaly(history: list[int], size: int, *, band: float = 0.5) -> dict[str, Any] | None:
    """``size`` against the median of ``history`` (the previous backups' stored sizes): the figures when outside
    ``median * (1 ± band)``, else None (also with fewer than :data:`MIN_HISTORY` previous backups)."""
    if len(history) < MIN_HISTORY:
        return None
    median = statistics.median(history)
    low, high = median * (1 - band), median * (1 + band)
    if low <= size <= high:
        return None
    return {
        "size": size,
        "median": median,
        "low": low,
        "high": high,
        "ratio": round(size / median, 3) if median else None,
    }


def key_first_use(events: list[audit.Event], bodies: list[dict], key_id: str) -> datetime | None:
    """When ``key_id`` was first used: the ``key-rotate`` event that introduced it, or the oldest backup under it."""
    times = [
        audit.parse_time(e.time)
        for e in events
        if e.operation == "key-rotate" and e.result == "ok" and e.details.get("new_key_id") == key_id
    ]
    times += [t for b in bodies if (b.get("key") or {}).get("key_id") == key_id and (t := _time(b.get("started")))]
    return min(times, default=None)


def stale(last: datetime | None, period: float | None, margin: float, now: datetime) -> bool:
    return period is not None and (last is None or (now - last).total_seconds() > period + margin)


# --- the view --------------------------------------------------------------------------------------------
@dataclass
class Group:
    kind: str
    label: str
    backups: list[tuple[str, dict]]  # oldest first
    period: float | None = None
    verify: dict[str, Any] | None = None
    drill: dict[str, Any] | None = None
    anomaly: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.label}"

    def as_dict(self, now: datetime) -> dict[str, Any]:
        last_id, last = self.backups[-1] if self.backups else (None, None)
        finished = _time(last["finished"]) if last else None
        return {
            "kind": self.kind,
            "label": self.label,
            "backups": len(self.backups),
            "stored_bytes": sum(int(b.get("stored_size") or 0) for _, b in self.backups),
            "last_backup": None
            if last is None
            else {
                "id": last_id,
                "finished": last["finished"],
                "age_seconds": round((now - finished).total_seconds(), 1) if finished else None,
                "stored_size": last.get("stored_size"),
                "raw_size": last.get("raw_size"),
            },
            "trend_stored_sizes": [int(b.get("stored_size") or 0) for _, b in self.backups[-7:]],
            "period_seconds": self.period,
            "last_verify": self.verify,
            "last_drill": self.drill,
            "size_anomaly": self.anomaly,
        }


@dataclass
class StatusReport:
    repository: str
    now: datetime
    groups: list[Group]
    wal: dict[str, dict[str, Any]]
    key: dict[str, Any] | None
    usage: dict[str, Any] | None
    alerts: list[Alert]
    notes: list[str]

    @property
    def ok(self) -> bool:
        return not self.alerts

    def as_dict(self) -> dict[str, Any]:
        return {
            "repository": self.repository,
            "time": _iso(self.now),
            "ok": self.ok,
            "exit_code": 0 if self.ok else StatusAlerting.exit_code,
            "alerts": [a.as_dict() for a in self.alerts],
            "groups": [g.as_dict(self.now) for g in self.groups],
            "wal": self.wal,
            "key": self.key,
            "usage": self.usage,
            "notes": self.notes,
        }

    def raise_for_alerts(self) -> None:
        if self.alerts:
            raise StatusAlerting(
                f"{len(self.alerts)} alert(s): " + "; ".join(f"{a.kind} {a.subject}: {a.message}" for a in self.alerts)
            )


def _group_key(body: dict) -> tuple[str, str]:
    return str(body.get("kind")), str((body.get("labels") or {}).get("name") or "-")


def _drill_figures(ev: audit.Event) -> dict[str, Any]:
    d = ev.details

    def s(ms: Any) -> float | None:
        return None if ms is None else round(int(ms) / 1000, 3)

    return {
        "time": ev.time, "result": ev.result, "mode": d.get("mode", "platform"),
        "rto_seconds": s(d.get("rto_ms")), "rto_target_seconds": s(d.get("rto_target_ms")),
        "rpo_seconds": s(d.get("rpo_ms")), "rpo_target_seconds": s(d.get("rpo_target_ms")),
        "missed": list(d.get("missed") or []), "error": d.get("error"),
    }  # fmt: skip


def compute_status(
    repo: Repository, settings: Settings | None = None, *, now: datetime | None = None, with_usage: bool = True
) -> StatusReport:
    """The status view and its alerts (see the module docstring); ``now`` is injectable for tests."""
    now = now or datetime.now(UTC)
    policy = StatusPolicy.from_settings(settings)
    notes: list[str] = []
    entries = Catalog(repo).entries()
    notes += [f"unreadable backup {e.backup_id}: {e.problem}" for e in entries if e.body is None]
    by_group: dict[tuple[str, str], list[tuple[str, dict]]] = {}
    for e in entries:
        if e.body is not None:
            by_group.setdefault(_group_key(e.body), []).append((e.backup_id, e.body))
    groups = {k: Group(k[0], k[1], v, period=policy.period(*k)) for k, v in by_group.items()}
    for name, period in policy.periods.items():  # expected "<kind>:<label>" with no backup at all
        if ":" in name and period is not None and tuple(name.split(":", 1)) not in groups:
            kind, label = name.split(":", 1)
            groups[(kind, label)] = Group(kind, label, [], period=period)
    owner = {bid: k for k, v in by_group.items() for bid, _ in v}

    report, why = _audit_report(repo)
    if why:
        notes.append(f"audit log not read: {why}")
    events = report.events if report else []
    if report and not report.ok:
        notes.append(f"the audit log is not intact ({len(report.problems)} problem(s)): see 'seedvault audit'")
    for ev in events:
        touched = {owner[b] for b in ev.backup_ids if b in owner}
        if ev.operation == "verify" and ev.details.get("scope", "full") == "full":
            for k in touched:
                groups[k].verify = {"time": ev.time, "ok": ev.result == "ok", "backup_id": ev.backup_ids[0]}
        elif ev.operation == DRILL:
            d = ev.details
            if d.get("kind") and d.get("label"):
                touched.add((str(d["kind"]), str(d["label"])))
            for k in touched:
                if k in groups:
                    groups[k].drill = _drill_figures(ev)

    alerts: list[Alert] = []
    for g in sorted(groups.values(), key=lambda g: (g.kind, g.label)):
        sizes = [int(b.get("stored_size") or 0) for _, b in g.backups]
        if sizes:
            g.anomaly = size_anomaly(sizes[-1 - policy.size_window : -1], sizes[-1], band=policy.size_band)
        last = _time(g.backups[-1][1]["finished"]) if g.backups else None
        if stale(last, g.period, policy.stale_margin, now):
            since = f"the last one finished {human_seconds((now - last).total_seconds())} ago" if last else "none yet"
            alerts.append(Alert("stale-backup", g.name, f"no backup within {human_seconds(g.period)} "
                                f"(+{human_seconds(policy.stale_margin)} margin): {since}"))  # fmt: skip
        if g.anomaly:
            a = g.anomaly
            band = f"{human_bytes(int(a['low']))}..{human_bytes(int(a['high']))}"
            text = f"backup {g.backups[-1][0]} stores {human_bytes(a['size'])}, outside {band} around the median"
            alerts.append(Alert("size-anomaly", g.name, f"{text} {human_bytes(int(a['median']))} of the previous ones"))
        if g.verify and not g.verify["ok"]:
            alerts.append(Alert("verify-failed", g.name, f"the last verification ({g.verify['time']}) failed"))
        if g.drill and g.drill["result"] != "ok":
            why_ = g.drill.get("error") or ", ".join(g.drill["missed"]) or "failed"
            alerts.append(Alert("drill-failed", g.name, f"the last drill ({g.drill['time']}) failed: {why_}"))

    key = _key_age(repo, events, [b for v in by_group.values() for _, b in v], now, notes)
    if key and key["age_seconds"] is not None and key["age_seconds"] > policy.key_max_age:
        alerts.append(Alert("key-age", f"key {key['key_id']}", f"in use since {key['first_use']} "
                            f"({human_seconds(key['age_seconds'])}), older than {human_seconds(policy.key_max_age)}: "
                            "rotate it (seedvault key rotate)"))  # fmt: skip
    wal = _wal(repo, now)
    for sid, w in wal.items():
        if policy.wal_max_age is not None and w["age_seconds"] > policy.wal_max_age:
            text = f"the newest WAL was stored {human_seconds(w['age_seconds'])} ago"
            alerts.append(Alert("wal-stale", f"wal {sid}", f"{text} (wal_max_age {human_seconds(policy.wal_max_age)})"))
    used = None
    if with_usage:
        from seedvault.ops.usage import usage

        u = usage(repo, settings.prices if settings else None)
        used = {"bytes": u.total.bytes, "objects": u.total.objects, "usd_month": round(u.total.usd_month, 4),
                "priced": any(c != "(none)" for c in u.classes)}  # fmt: skip
    ordered = sorted(groups.values(), key=lambda g: (g.kind, g.label))
    return StatusReport(repo.storage.url, now, ordered, wal, key, used, alerts, notes)


def _audit_report(repo: Repository) -> tuple[audit.AuditReport | None, str | None]:
    try:
        return audit.verify_chain(repo, full=False), None
    except SeedvaultError as exc:
        return None, exc.one_line()


def _key_age(
    repo: Repository, events: list[audit.Event], bodies: list[dict], now: datetime, notes: list[str]
) -> dict[str, Any] | None:
    if repo.key_source is None:
        return None
    try:
        key_id = repo.master.key_id
    except SeedvaultError as exc:
        notes.append(f"master key not read: {exc.one_line()}")
        return None
    first = key_first_use(events, bodies, key_id)
    age = round((now - first).total_seconds(), 1) if first else None
    return {"key_id": key_id, "first_use": _iso(first), "age_seconds": age}


def _wal(repo: Repository, now: datetime) -> dict[str, dict[str, Any]]:
    newest: dict[str, datetime] = {}
    stored: dict[str, int] = {}
    for info in repo.storage.list(WAL_ROOT):
        sid = info.key[len(WAL_ROOT) :].split("/", 1)[0]
        if not sid.isdigit():
            continue
        stored[sid] = stored.get(sid, 0) + info.size
        if sid not in newest or info.modified > newest[sid]:
            newest[sid] = info.modified
    return {
        sid: {"newest": _iso(t), "age_seconds": round((now - t).total_seconds(), 1), "stored_bytes": stored[sid]}
        for sid, t in sorted(newest.items())
    }


# --- a new backup against its group (what a backup flow checks before it prunes) ----------------------------
def check_new_backup(repo: Repository, backup_id: str, settings: Settings | None = None) -> dict[str, Any] | None:
    """The size-anomaly figures of the committed ``backup_id`` against its kind and label, or None."""
    policy = StatusPolicy.from_settings(settings)
    bodies = Catalog(repo).bodies()
    mine = next((b for bid, b in bodies if bid == backup_id), None)
    if mine is None:
        return None
    group, finished = _group_key(mine), mine.get("finished") or ""
    same = [
        int(b.get("stored_size") or 0)
        for bid, b in bodies
        if bid != backup_id and _group_key(b) == group and (b.get("finished") or "") <= finished
    ]
    return size_anomaly(same[-policy.size_window :], int(mine.get("stored_size") or 0), band=policy.size_band)


def raise_if_anomalous(repo: Repository, backup_id: str, settings: Settings | None = None) -> None:
    found = check_new_backup(repo, backup_id, settings)
    if found:
        raise SizeAnomaly(
            f"backup {backup_id} stores {human_bytes(found['size'])}, outside {human_bytes(int(found['low']))}.."
            f"{human_bytes(int(found['high']))} around the median {human_bytes(int(found['median']))} of the "
            "previous backups of its kind and label; it is kept, nothing was pruned",
            hint="check the source (a big delete, a wrong database?); 'seedvault status' shows the trend",
        )
