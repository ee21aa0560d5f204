"""Property tests of the retention planner over random histories (issue 14, item 4).

Random repositories: generic and Neo4j backups with DIFF chains, PostgreSQL base backups and WAL on up to
three timelines (a promotion branching off timeline 1, a second one off 1 or 2, the old primary sometimes
archiving on after the branch), pins, Object Lock dates, verification states, clock times. For each, the
planner must

* never delete what the never-deleted rules name (pins, locks, parents of kept backups, future dates, the
  newest verified backups and everything newer than the newest verified one, history files);
* keep every moment of the PITR window recoverable on every timeline that was recoverable before, checked
  with the very functions a point-in-time recovery uses (seedvault.sources.postgres.wal.plan.choose_backup and walk);
* be idempotent: planning again over what it kept deletes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seedvault import retention as rt
from seedvault.errors import SeedvaultError
from seedvault.sources.postgres.wal import names as wn
from seedvault.sources.postgres.wal.plan import Target, choose_backup, walk

SEG = 16 << 20
SID = "7300000000000000001"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
STEP = timedelta(hours=6)  # one WAL segment per six hours: 90 days in 360 segments


def seg_time(segno: int) -> datetime:
    return T0 + segno * STEP


@dataclass
class World:
    backups: list[rt.BackupItem]
    wal: list[rt.WalItem]
    histories: dict[tuple[str, int], list[wn.HistoryEntry]]
    policies: rt.Policies
    now: datetime


def _bid(t: datetime, n: int) -> str:
    return f"{t.strftime('%Y%m%dT%H%M%SZ')}-{n:06x}"


@st.composite
def worlds(draw) -> World:
    last_seg = draw(st.integers(40, 360))
    now = seg_time(last_seg) + draw(st.sampled_from([timedelta(0), timedelta(hours=1), timedelta(days=3)]))
    # Timelines: 2 branches off 1 at b2; 3 branches off 1 or 2 at b3 > b2. The parent may archive on after it.
    ntl = draw(st.integers(1, 3))
    ancestry = {1: [wn.HistoryEntry(1, 0, None)]}
    ranges = {1: (1, last_seg)}  # segments each timeline archived (inclusive)
    if ntl >= 2:
        b2 = draw(st.integers(5, last_seg - 3))
        ancestry[2] = [wn.HistoryEntry(1, 0, b2 * SEG), wn.HistoryEntry(2, b2 * SEG, None)]
        ranges[1] = (1, last_seg if draw(st.booleans()) else b2)
        ranges[2] = (b2, last_seg)
        if ntl == 3:
            b3 = draw(st.integers(b2 + 1, last_seg - 1))
            parent = draw(st.sampled_from([1, 2]))
            if parent == 2:
                ancestry[3] = [
                    *ancestry[2][:-1],
                    wn.HistoryEntry(2, b2 * SEG, b3 * SEG),
                    wn.HistoryEntry(3, b3 * SEG, None),
                ]
                ranges[2] = (b2, last_seg if draw(st.booleans()) else b3)
            else:
                ancestry[3] = [wn.HistoryEntry(1, 0, b3 * SEG), wn.HistoryEntry(3, b3 * SEG, None)]
                if ranges[1][1] < b3:
                    ranges[1] = (1, b3)
            ranges[3] = (b3, last_seg)
    wal: list[rt.WalItem] = []
    for tli, (lo, hi) in ranges.items():
        for s in range(lo, hi + 1):
            name = wn.segment_name(tli, s, SEG)
            wal.append(rt.WalItem(SID, f"wal/{tli}/{name}", name, "segment", tli, name, seg_time(s) + STEP))
    for tli in ancestry:
        if tli > 1:
            name = f"{tli:08X}.history"
            wal.append(
                rt.WalItem(
                    SID, f"wal/history/{name}", name, "history", tli, None, seg_time(ancestry[tli][-1].begin // SEG)
                )
            )
    histories = {(SID, t): a for t, a in ancestry.items()}

    backups: list[rt.BackupItem] = []
    n = 0

    def extras(t: datetime) -> dict:
        pinned = draw(st.sampled_from([None, None, None, None, "pinned by ops@db1: audit hold"]))
        lock = draw(st.sampled_from([None, None, None, now + timedelta(days=3), now - timedelta(days=1)]))
        return {"pinned": pinned, "locked_until": lock, "verified": draw(st.booleans())}

    # Base backups: on a timeline that archived the segments they span, consistent at their stop segment.
    for _ in range(draw(st.integers(0, 8))):
        tli = draw(st.sampled_from(sorted(ranges)))
        lo, hi = ranges[tli]
        if hi - lo < 2:
            continue
        start = draw(st.integers(lo, hi - 2))
        stop = start + draw(st.integers(0, 2))
        end = ancestry[tli][-1].end  # None: the timeline's own range
        t = seg_time(start)
        source = {
            "timeline": tli,
            "start_lsn": wn.format_lsn(start * SEG + 40),
            "stop_lsn": wn.format_lsn(stop * SEG + 100),
            "stop_time": (seg_time(stop) + timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "wal_segment_size": SEG,
        }
        assert end is None
        n += 1
        backups.append(
            rt.BackupItem(
                _bid(t, n),
                rt.PHYSICAL,
                "pg",
                seg_time(stop) + timedelta(minutes=30),
                system_id=SID,
                source=source,
                **extras(t),
            )  # fmt: skip
        )
    # Generic backups and Neo4j chains (a DIFF's parent is an older backup of the same chain).
    for kind, label in (("put", "a"), ("neo4j", "graph")):
        for _ in range(draw(st.integers(0, 10))):
            t = now - timedelta(hours=draw(st.integers(-2, 24 * 400)))
            n += 1
            parent = None
            same = [b for b in backups if b.kind == kind and b.backup_id < _bid(t, n)]
            if kind == "neo4j" and same and draw(st.booleans()):
                parent = draw(st.sampled_from(same)).backup_id
            backups.append(rt.BackupItem(_bid(t, n), kind, label, t, parent=parent, **extras(t)))
    default = rt.Policy(
        keep_within=timedelta(days=draw(st.integers(0, 40))),
        keep_last=draw(st.integers(0, 3)),
        keep_daily=draw(st.integers(0, 7)),
        keep_weekly=draw(st.integers(0, 4)),
        keep_monthly=draw(st.integers(0, 12)),
        keep_yearly=draw(st.integers(0, 2)),
        min_verified=draw(st.integers(0, 2)),
        pitr_window=draw(st.sampled_from([None, timedelta(days=1), timedelta(days=7), timedelta(days=20)])),
    )
    return World(backups, wal, histories, rt.Policies(default), now)


def _recoverable(world: World, backups: list[rt.BackupItem], wal: list[rt.WalItem], tli: int, t: datetime) -> bool:
    ancestry = world.histories[(SID, tli)]
    bases = [(b.backup_id, {"source": b.source}) for b in backups if b.kind == rt.PHYSICAL]
    names: dict[int, set[str]] = {}
    for w in wal:
        if w.kind == "segment":
            names.setdefault(w.timeline, set()).add(w.name)
    try:
        bid, body = choose_backup(bases, ancestry, Target("time", time=t))
        walk(bid, body["source"], ancestry, names, Target("time", time=t))
    except SeedvaultError:
        return False
    return True


def _kept(world: World, p: rt.RetentionPlan) -> tuple[list[rt.BackupItem], list[rt.WalItem]]:
    gone_b, gone_w = p.deletions()
    ids = {b.backup_id for b in gone_b}
    keys = {w.key for w in gone_w}
    return [b for b in world.backups if b.backup_id not in ids], [w for w in world.wal if w.key not in keys]


PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(worlds())
def test_never_deletes_what_the_never_rules_name(world: World):
    p = rt.plan(world.backups, world.wal, world.policies, world.now, histories=world.histories)
    decided = {d.name: d for d in p.backups}
    assert len(decided) == len(world.backups) and len(p.wal) == len(world.wal)
    kept = {bid for bid, d in decided.items() if d.keep}
    for b in world.backups:
        d = decided[b.backup_id]
        assert d.reasons, "every decision says why"
        if b.pinned or (b.locked_until and b.locked_until > world.now) or b.time > world.now + rt.FUTURE_SKEW:
            assert d.keep, (b, d.reasons)
        if b.parent and b.backup_id in kept:
            assert b.parent in kept, f"{b.backup_id} kept without its parent {b.parent}"
    for kind, label in {(b.kind, b.label) for b in world.backups}:
        policy = world.policies.for_(kind, label)
        group = sorted(
            (b for b in world.backups if (b.kind, b.label) == (kind, label)), key=lambda b: (b.time, b.backup_id)
        )
        verified = [b for b in group if b.verified]
        for b in verified[-policy.min_verified :] if policy.min_verified else []:
            assert b.backup_id in kept, f"newest verified {b.backup_id} deleted"
        if policy.min_verified:
            newest_ok = verified[-1] if verified else None
            for b in group:
                if newest_ok is None or (b.time, b.backup_id) > (newest_ok.time, newest_ok.backup_id):
                    assert b.backup_id in kept, f"{b.backup_id} deleted before a newer backup was verified"
    for d in p.wal:
        w = d.item
        assert isinstance(w, rt.WalItem)
        if w.kind == "history":
            assert d.keep
    if not any(b.kind == rt.PHYSICAL for b in world.backups):
        assert all(d.keep for d in p.wal), "WAL of a system without a base backup is all there is"
    # A kept base backup keeps what makes it consistent: recovery to its own stop works from what is left.
    kb, kw = _kept(world, p)
    names = {}
    for w in kw:
        if w.kind == "segment":
            names.setdefault(w.timeline, set()).add(w.name)
    for b in kb:
        if b.kind == rt.PHYSICAL:
            assert b.source is not None
            walk(b.backup_id, b.source, world.histories[(SID, int(b.source["timeline"]))], names, Target("immediate"))


@PROPS
@given(worlds())
def test_every_moment_of_the_pitr_window_stays_recoverable(world: World):
    p = rt.plan(world.backups, world.wal, world.policies, world.now, histories=world.histories)
    kb, kw = _kept(world, p)
    window = world.policies.for_(rt.PHYSICAL, "pg").window()
    start = world.now - window
    moments = [start, world.now, start + (world.now - start) / 2]
    moments += [w.modified for w in world.wal if start <= w.modified <= world.now][::7]
    for tli in sorted({t for (_, t) in world.histories}):
        for t in moments:
            if _recoverable(world, world.backups, world.wal, tli, t):
                assert _recoverable(world, kb, kw, tli, t), f"timeline {tli} at {t} is no longer recoverable"


@PROPS
@given(worlds())
def test_planning_again_after_a_prune_deletes_nothing(world: World):
    first = rt.plan(world.backups, world.wal, world.policies, world.now, histories=world.histories)
    kb, kw = _kept(world, first)
    again = rt.plan(kb, kw, world.policies, world.now, histories=world.histories)
    assert again.deletions() == ([], []), [d.reasons for d in again.backups if not d.keep]
    assert [(d.name, d.reasons) for d in again.backups] == [(d.name, d.reasons) for d in first.backups if d.keep]


def test_policy_table_is_parsed_and_overrides_start_from_the_default():
    policies = rt.policies_from(
        {
            "keep_within": "7d",
            "keep_daily": 7,
            "postgres-physical": {"pitr_window": "2d"},
            "label:orders": {"keep_monthly": 12},
        }
    )
    assert policies.default.keep_within == timedelta(days=7) and policies.default.keep_daily == 7
    pg = policies.for_("postgres-physical", "x")
    assert pg.pitr_window == timedelta(days=2) and pg.keep_daily == 7
    assert policies.for_("put", "orders").keep_monthly == 12
    assert policies.for_("put", "other") == policies.default
    from seedvault.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown retention setting 'keep_forever'"):
        rt.policies_from({"keep_forever": 1})
    with pytest.raises(ConfigError, match="keep_daily must be a whole number"):
        rt.policies_from({"keep_daily": -1})


def test_gfs_keeps_the_newest_of_each_period_and_says_which_rule():
    now = datetime(2026, 6, 30, 12, tzinfo=UTC)
    items = [
        rt.BackupItem(_bid(now - timedelta(days=d), d), "put", "a", now - timedelta(days=d), verified=True)
        for d in range(0, 120)
    ]
    policy = rt.Policy(keep_within=timedelta(0), keep_daily=3, keep_monthly=3, min_verified=1)
    p = rt.plan(items, [], rt.Policies(policy), now)
    kept = {d.name: d.reasons for d in p.backups if d.keep}
    assert len(kept) == 3 + 2  # 3 days (June 30, 29, 28) + the newest of May and April (June's is the 30th)
    assert kept[_bid(now, 0)] == [
        "keep_daily 3 (2026-06-30)",
        "keep_monthly 3 (2026-06)",
        "newest verified (min_verified 1)",
    ]
    may = max(b.backup_id for b in items if b.time.month == 5)
    assert kept[may] == ["keep_monthly 3 (2026-05)"]


def test_an_older_backup_goes_only_once_a_newer_one_was_verified():
    now = datetime(2026, 6, 30, 12, tzinfo=UTC)
    at = [now - timedelta(days=d) for d in (90, 60, 40, 35)]
    items = [rt.BackupItem(_bid(t, i), "put", "a", t, verified=(i == 1)) for i, t in enumerate(at)]
    p = rt.plan(items, [], rt.Policies(rt.Policy(keep_within=timedelta(days=30))), now)
    decided = [(d.keep, d.reasons) for d in p.backups]
    assert decided == [
        (False, ["outside the policy (keep_within 30d, min_verified 1)"]),
        (True, ["newest verified (min_verified 1)"]),
        (True, ["no newer backup has been verified yet"]),
        (True, ["no newer backup has been verified yet"]),
    ]
    # Nothing verified at all: nothing is deleted; min_verified 0 switches the rule off.
    unverified = [rt.BackupItem(b.backup_id, b.kind, b.label, b.time) for b in items]
    assert all(d.keep for d in rt.plan(unverified, [], rt.Policies(), now).backups)
    off = rt.Policies(rt.Policy(min_verified=0))
    assert not any(d.keep for d in rt.plan(unverified, [], off, now).backups)


def test_a_kept_platform_group_keeps_its_members_their_parents_and_the_wal_to_its_restore_point():
    """Groups (issue 15): outside every member's own policy, a kept group still holds them and its WAL."""
    now = seg_time(200)
    old = seg_time(10)  # far outside keep_within / pitr_window of the members' kinds
    base_src = {"timeline": 1, "start_lsn": wn.format_lsn(10 * SEG + 40), "stop_lsn": wn.format_lsn(10 * SEG + 900),
                "stop_time": old.strftime("%Y-%m-%dT%H:%M:%SZ"), "wal_segment_size": SEG}  # fmt: skip
    base = rt.BackupItem(_bid(old, 1), rt.PHYSICAL, "pg", old, system_id=SID, source=base_src)
    newer_base_t = seg_time(190)
    newer_src = dict(base_src, start_lsn=wn.format_lsn(190 * SEG + 40), stop_lsn=wn.format_lsn(190 * SEG + 900))
    newer = rt.BackupItem(_bid(newer_base_t, 2), rt.PHYSICAL, "pg", newer_base_t, system_id=SID, source=newer_src)
    full = rt.BackupItem(_bid(seg_time(11), 3), "neo4j", "graph", seg_time(11))
    diff = rt.BackupItem(_bid(seg_time(13), 4), "neo4j", "graph", seg_time(13), parent=full.backup_id)
    group_t = seg_time(13) + timedelta(minutes=5)
    rp_lsn = wn.format_lsn(13 * SEG + 500)
    group = rt.BackupItem(_bid(group_t, 5), "platform", "platform", group_t, pinned="quarterly audit (ops)",
                          members=(diff.backup_id, base.backup_id), wal_until=(SID, 1, rp_lsn))  # fmt: skip
    wal = [rt.WalItem(SID, f"wal/1/{n}", n, "segment", 1, n, seg_time(s) + STEP)
           for s in range(5, 200) for n in [wn.segment_name(1, s, SEG)]]  # fmt: skip
    policies = rt.policies_from({"keep_within": "1d", "min_verified": 0, "pitr_window": "1d"})
    items = [base, newer, full, diff, group]
    decided = {d.name: d for d in rt.plan(items, wal, policies, now).backups}
    assert decided[group.backup_id].keep
    for member in (diff, base):
        assert any("member of kept group" in r for r in decided[member.backup_id].reasons)
    assert decided[full.backup_id].keep and any("parent of kept" in r for r in decided[full.backup_id].reasons)
    kept = {d.item.segment for d in rt.plan(items, wal, policies, now).wal if d.keep}
    needed = {wn.segment_name(1, s, SEG) for s in range(10, 14)}  # base start .. the restore point's segment
    assert needed <= kept and wn.segment_name(1, 15, SEG) not in kept and wn.segment_name(1, 9, SEG) not in kept
    unpinned = rt.BackupItem(**{**group.__dict__, "pinned": None})
    gone = {d.name for d in rt.plan([base, newer, full, diff, unpinned], wal, policies, now).backups if not d.keep}
    assert {group.backup_id, diff.backup_id, full.backup_id, base.backup_id} <= gone  # nothing holds them now


def test_without_a_backup_before_the_window_the_anchor_is_the_one_consistent_first():
    """Found by the property above: two base backups start at the same LSN, the one with the smaller id stops
    six hours later; the window starts before both. The anchor must be the one consistent first, or the hours
    between the two stops are lost."""
    now = seg_time(40)
    src = {"timeline": 1, "start_lsn": wn.format_lsn(1 * SEG + 40), "wal_segment_size": SEG}

    def base(n: int, stop_seg: int) -> rt.BackupItem:
        stop = seg_time(stop_seg) + timedelta(minutes=30)
        source = {
            **src,
            "stop_lsn": wn.format_lsn(stop_seg * SEG + 100),
            "stop_time": stop.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        return rt.BackupItem(_bid(seg_time(1), n), rt.PHYSICAL, "pg", stop, system_id=SID, source=source)

    late, early = base(1, 2), base(2, 1)  # the smaller id stops a segment later
    wal = [rt.WalItem(SID, f"wal/1/{n}", n, "segment", 1, n, seg_time(s) + STEP)
           for s in range(1, 40) for n in [wn.segment_name(1, s, SEG)]]  # fmt: skip
    policies = rt.policies_from({"keep_within": "1d", "min_verified": 0, "pitr_window": "60d"})
    decided = {d.name: d for d in rt.plan([late, early], wal, policies, now).backups}
    assert decided[early.backup_id].keep and any("PITR anchor" in r for r in decided[early.backup_id].reasons)
