"""The status view as markdown: the ``seedvault-status`` artifact's text, and what ``seedvault status`` prints."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from seedvault.ops.status import StatusReport
from seedvault.units import human_bytes, human_seconds


def trend(sizes: list[int]) -> str:
    bars = "▁▂▃▄▅▆▇█"
    if not sizes:
        return "-"
    top = max(sizes) or 1
    return "".join(bars[min(len(bars) - 1, int(s / top * (len(bars) - 1) + 0.5))] for s in sizes)


def _verdict(value: float | None, target: float | None) -> str:
    if value is None:
        return "-"
    if target is None:
        return human_seconds(value)
    return f"{human_seconds(value)} / target {human_seconds(target)}: {'pass' if value <= target else 'FAIL'}"


def render_markdown(report: StatusReport | Mapping[str, Any]) -> str:
    d = report.as_dict() if isinstance(report, StatusReport) else dict(report)
    out = [f"# seedvault status: {'OK' if d['ok'] else 'ALERTING'}", "",
           f"Repository `{d['repository']}`, as of {d['time']}.", ""]  # fmt: skip
    if d["alerts"]:
        out += ["## Alerts", ""] + [f"- **{a['kind']}** {a['subject']}: {a['message']}" for a in d["alerts"]] + [""]
    out += ["## Backups", "", "| store | database | last good backup | age | size | trend (last 7) | stored | "
            "last verify | last drill | RTO | RPO |", "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for g in d["groups"]:
        last, ver, dr = g["last_backup"], g["last_verify"], g["last_drill"]
        sizes = g["trend_stored_sizes"]
        cells = [
            g["kind"], g["label"], last["id"] if last else "none",
            human_seconds(last["age_seconds"]) if last else "-", human_bytes(last["stored_size"]) if last else "-",
            f"{trend(sizes)} {' → '.join(human_bytes(s) for s in sizes[-3:])}" if sizes else "-",
            human_bytes(g["stored_bytes"]),
            f"{ver['time'][:16]} {'ok' if ver['ok'] else 'FAILED'}" if ver else "never",
            f"{dr['time'][:16]} {'pass' if dr['result'] == 'ok' else 'FAIL'} ({dr['mode']})" if dr else "never",
            _verdict(dr["rto_seconds"], dr["rto_target_seconds"]) if dr else "-",
            _verdict(dr["rpo_seconds"], dr["rpo_target_seconds"]) if dr else "-",
        ]  # fmt: skip
        out.append("| " + " | ".join(str(c) for c in cells) + " |")
    if d["wal"]:
        out += ["", "## WAL", "", "| system id | newest WAL stored | lag | stored |", "|---|---|---|---|"]
        for sid, w in d["wal"].items():
            out.append(
                f"| {sid} | {w['newest']} | {human_seconds(w['age_seconds'])} | {human_bytes(w['stored_bytes'])} |"
            )
    out += ["", "## Repository", ""]
    if d["usage"]:
        u = d["usage"]
        cost = f"{u['usd_month']:.4f} USD/month (estimate)" if u["priced"] else "no storage classes, no cost estimate"
        out.append(f"- {human_bytes(u['bytes'])} in {u['objects']} objects; {cost}")
    if d["key"]:
        k = d["key"]
        age = human_seconds(k["age_seconds"]) if k["age_seconds"] is not None else "unknown"
        out.append(f"- master key {k['key_id']}: first used {k['first_use'] or '-'} ({age} ago)")
    out += [f"- note: {n}" for n in d["notes"]]
    return "\n".join(out) + "\n"
