"""Neo4j property values as JSON for the graph stream, and back to what the driver (or the server) can send.

Why a module of its own: both the export/import (:mod:`.export`) and the Bolt writes (:mod:`.bolt`, which must
parse values the driver cannot carry) need these types. The encoding is specified in FORMAT.md, section 10.5
("Neo4j graph stream"): JSON where JSON is exact, ``{"$t": tag, ...}`` objects otherwise.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta, tzinfo
from typing import Any

import pytz
from neo4j import spatial as nsp
from neo4j import time as nt

from seedvault.errors import FormatError

try:  # the VECTOR property type (Neo4j 2025.10+) exists in driver 6 only
    from neo4j.vector import Vector
except ImportError:  # pragma: no cover - driver 5
    Vector = None  # type: ignore[assignment,misc]

TAG = "$t"
_POINTS = {7203: nsp.CartesianPoint, 9157: nsp.CartesianPoint, 4326: nsp.WGS84Point, 4979: nsp.WGS84Point}
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


# --- property values --------------------------------------------------------------------------------------
def encode_value(value: Any) -> Any:
    """A property value as JSON; types JSON cannot hold exactly get a ``$t`` tag (Neo4j has no map properties,
    so a JSON object in ``props`` is always a tag)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if hasattr(value, "raw_data") and hasattr(value, "error"):  # the driver's BrokenHydrationObject
        return _encode_unhydrated(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else {TAG: "float", "v": _float_name(value)}
    if isinstance(value, bytes | bytearray):
        return {TAG: "bytes", "v": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, nsp.Point):  # a tuple: test before lists
        return {TAG: "point", "srid": value.srid, "c": [float(c) for c in value]}
    if isinstance(value, nt.Duration):  # a tuple too
        v = value
        return {TAG: "duration", "months": v.months, "days": v.days, "s": v.seconds, "ns": v.nanoseconds}
    if isinstance(value, nt.DateTime):
        return _encode_datetime(value)
    if isinstance(value, nt.Date):
        return {TAG: "date", "v": value.iso_format()}
    if isinstance(value, nt.Time):
        local = value.replace(tzinfo=None).iso_format()
        if value.tzinfo is None:
            return {TAG: "localtime", "v": local}
        return {TAG: "time", "v": local, "off": int(value.utcoffset().total_seconds())}
    if Vector is not None and isinstance(value, Vector):
        return {TAG: "vector", "dtype": value.dtype.value, "v": base64.b64encode(value.raw()).decode()}
    if isinstance(value, list | tuple):
        return [encode_value(v) for v in value]
    raise FormatError(f"a value of type {type(value).__name__} has no export form")


def _float_name(value: float) -> str:
    return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"


def _encode_datetime(value: nt.DateTime) -> dict[str, Any]:
    """Wall-clock time plus offset; plus the zone id when the value has one (the offset then fixes the instant,
    which matters in the hour a DST change repeats). The driver hands back both ``Z`` and ``[UTC]`` as pytz's
    UTC, so that one is written as offset 0 (``Z``), the common case."""
    tz = value.tzinfo
    local = value.replace(tzinfo=None).iso_format()
    if tz is None:
        return {TAG: "localdatetime", "v": local}
    out: dict[str, Any] = {TAG: "datetime", "v": local, "off": int(value.utcoffset().total_seconds())}
    zone = _zone_name(tz)
    if zone is not None:
        out["zone"] = zone
    return out


# --- temporal values outside the driver's range --------------------------------------------------------------
# Neo4j stores years -999,999,999 to +999,999,999; Python (so the driver) only 1 to 9999. The driver hands such a
# value over unhydrated, with the Bolt structure it could not turn into a type; the structure holds epoch
# numbers, from which the ISO text Neo4j itself parses is computed here (proleptic Gregorian calendar).
_DAY = 86400


def _civil(days: int) -> tuple[int, int, int]:
    """(year, month, day) of ``days`` since 1970-01-01, for any integer (H. Hinnant's ``civil_from_days``)."""
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month, doy - (153 * mp + 2) // 5 + 1


def iso_date(days: int) -> str:
    """ISO 8601 date as Neo4j writes and parses it: 4-digit years 0000-9999, else signed (``+10000``, ``-0001``)."""
    year, month, day = _civil(days)
    text = f"{year:04d}" if 0 <= year <= 9999 else f"{'+' if year > 0 else '-'}{abs(year):04d}"
    return f"{text}-{month:02d}-{day:02d}"


def iso_local(seconds: int, nanoseconds: int) -> str:
    """ISO local date-time of ``seconds`` since 1970-01-01T00:00 (wall clock) plus nanoseconds."""
    days, secs = divmod(seconds, _DAY)
    return f"{iso_date(days)}T{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}.{nanoseconds:09d}"


def _offset_text(seconds: int) -> str:
    sign, secs = ("-", -seconds) if seconds < 0 else ("+", seconds)
    text = f"{sign}{secs // 3600:02d}:{secs // 60 % 60:02d}"
    return text + (f":{secs % 60:02d}" if secs % 60 else "")


def _encode_unhydrated(value: Any) -> Any:
    """A value the driver could not hydrate (a temporal outside years 1-9999, or a list holding one)."""
    raw = value.raw_data
    if isinstance(raw, list):
        return [encode_value(v) for v in raw]
    tag, fields = getattr(raw, "tag", None), list(getattr(raw, "fields", []))
    if tag == b"D":
        return {TAG: "date", "v": iso_date(fields[0])}
    if tag == b"d":
        return {TAG: "localdatetime", "v": iso_local(fields[0], fields[1])}
    if tag in (b"I", b"F"):  # offset; Bolt 5 sends UTC seconds ("I"), Bolt 4 wall-clock ones ("F")
        seconds, nanos, offset = fields
        return {TAG: "datetime", "v": iso_local(seconds + offset if tag == b"I" else seconds, nanos), "off": offset}
    if tag == b"i":  # zone id, UTC seconds: the offset at that instant is the server's to know
        return {TAG: "datetime", "utc": iso_local(fields[0], fields[1]), "zone": fields[2]}
    if tag == b"f":  # zone id, wall-clock seconds (Bolt 4)
        return {TAG: "datetime", "v": iso_local(fields[0], fields[1]), "zone": fields[2]}
    raise FormatError(f"the driver could not read a value ({tag!r}): {value.error}")


@dataclass(frozen=True)
class ServerTemporal:
    """A temporal value only the server can hold (years outside 1-9999): imported by a Cypher function.

    ``kind`` is ``date``, ``localdatetime`` or ``datetime``; ``text`` ISO 8601 as Neo4j parses it; ``zone`` set
    when ``text`` is the UTC instant of a value in that zone (the server computes the wall clock).
    """

    kind: str
    text: str
    zone: str | None = None

    def parameter(self) -> dict[str, Any]:
        return {"v": self.text, "z": self.zone}

    @staticmethod
    def cypher(kind: str, expr: str) -> str:
        """The Cypher expression that makes the value from its :meth:`parameter` ``expr``."""
        if kind == "datetime":
            zoned = f"datetime({{datetime: datetime({expr}.v), timezone: {expr}.z}})"
            return f"CASE WHEN {expr}.z IS NULL THEN datetime({expr}.v) ELSE {zoned} END"
        return f"{kind}({expr}.v)"


def _extended(text: str) -> bool:
    """An ISO date(-time) whose year Python cannot hold (signed, or year 0)."""
    return text[:1] in "+-" or text.startswith("0000")


def _server_temporal(value: Any) -> ServerTemporal | None:
    """An in-range driver temporal as a :class:`ServerTemporal` (a list holding an out-of-range one goes whole)."""
    if isinstance(value, nt.DateTime):
        if value.tzinfo is None:
            return ServerTemporal("localdatetime", value.iso_format())
        zone = _zone_name(value.tzinfo)
        if zone is not None:
            utc = value.astimezone(pytz.utc).replace(tzinfo=None).iso_format()
            return ServerTemporal("datetime", utc + "Z", zone)
        off = int(value.utcoffset().total_seconds())
        return ServerTemporal("datetime", value.replace(tzinfo=None).iso_format() + _offset_text(off))
    if isinstance(value, nt.Date):
        return ServerTemporal("date", value.iso_format())
    return None


class _Zone(tzinfo):
    """Zone id ``UTC`` (``[UTC]``): the driver gives it as pytz's UTC, which is also what offset ``Z`` becomes.

    :class:`.bolt.BoltGraph` asks the server which values are in the zone and puts this on them, so the export
    writes the zone and the import (pytz's UTC is sent as zone id ``UTC``) restores it.
    """

    zone = "UTC"

    def utcoffset(self, dt: Any) -> timedelta:
        return timedelta(0)

    def dst(self, dt: Any) -> timedelta:
        return timedelta(0)

    def tzname(self, dt: Any) -> str:
        return "UTC"

    def __repr__(self) -> str:
        return "_Zone('UTC')"


ZONE_UTC = _Zone()


def _zone_name(tz: Any) -> str | None:
    """The zone id of a driver tzinfo, or None for a fixed offset (pytz's UTC is offset ``Z``: see :class:`_Zone`)."""
    zone = getattr(tz, "zone", None) or getattr(tz, "key", None)
    return zone if isinstance(zone, str) and tz is not pytz.utc else None


class _Offset(tzinfo):
    """A fixed UTC offset in seconds that the driver accepts on Time too (``datetime.timezone`` fails there)."""

    def __init__(self, seconds: int) -> None:
        self._delta = timedelta(seconds=seconds)

    def utcoffset(self, dt: Any) -> timedelta:
        return self._delta

    def dst(self, dt: Any) -> timedelta:
        return timedelta(0)

    def tzname(self, dt: Any) -> str:
        sign, secs = ("-", -self._delta) if self._delta < timedelta(0) else ("+", self._delta)
        return f"{sign}{int(secs.total_seconds()) // 3600:02d}:{int(secs.total_seconds()) // 60 % 60:02d}"

    def __repr__(self) -> str:
        return f"_Offset({int(self._delta.total_seconds())})"


def decode_value(value: Any) -> Any:
    """The inverse of :func:`encode_value`: driver types the import sends back as parameters, or a
    :class:`ServerTemporal` where the driver cannot hold the value (a list holding one is all of them)."""
    if isinstance(value, list):
        items = [decode_value(v) for v in value]
        if any(isinstance(v, ServerTemporal) for v in items):
            return [v if isinstance(v, ServerTemporal) else _server_temporal(v) for v in items]
        return items
    if not isinstance(value, dict):
        return value
    tag = value.get(TAG)
    try:
        if tag in ("date", "localdatetime", "datetime") and (value.get("utc") or _extended(value["v"])):
            return _decode_extended(tag, value)
        if tag == "float":
            return _NON_FINITE[value["v"]]
        if tag == "bytes":
            return base64.b64decode(value["v"], validate=True)
        if tag == "point":
            return _POINTS[value["srid"]](tuple(float(c) for c in value["c"]))
        if tag == "duration":
            return nt.Duration(months=value["months"], days=value["days"], seconds=value["s"], nanoseconds=value["ns"])
        if tag == "date":
            return nt.Date.from_iso_format(value["v"])
        if tag == "localtime":
            return nt.Time.from_iso_format(value["v"])
        if tag == "time":
            return nt.Time.from_iso_format(value["v"]).replace(tzinfo=_Offset(value["off"]))
        if tag == "localdatetime":
            return nt.DateTime.from_iso_format(value["v"])
        if tag == "datetime":
            local = nt.DateTime.from_iso_format(value["v"])
            if "zone" not in value:
                return local.replace(tzinfo=_Offset(value["off"]))
            utc = (local - timedelta(seconds=value["off"])).replace(tzinfo=pytz.utc)
            return utc.astimezone(pytz.timezone(value["zone"]))
        if tag == "vector" and Vector is not None:
            return Vector.from_bytes(base64.b64decode(value["v"], validate=True), value["dtype"])
    except (KeyError, TypeError, ValueError, pytz.UnknownTimeZoneError) as exc:
        raise FormatError(f"invalid {tag} value in the graph stream: {exc}") from None
    raise FormatError(f"unknown value tag {tag!r} in the graph stream")


def _decode_extended(tag: str, value: Mapping[str, Any]) -> ServerTemporal:
    if "utc" in value:
        return ServerTemporal(tag, str(value["utc"]) + "Z", str(value["zone"]))
    text = str(value["v"])
    if tag == "datetime":
        text += f"[{value['zone']}]" if "off" not in value else _offset_text(int(value["off"]))
    return ServerTemporal(tag, text)


def encode_props(props: Mapping[str, Any], where: str = "an entity") -> dict[str, Any]:
    """``props`` as JSON; a value that cannot be exported fails naming ``where`` (node or relationship) and key."""
    out = {}
    for key, value in props.items():
        try:
            out[key] = encode_value(value)
        except FormatError as exc:
            raise FormatError(f"cannot export property {key!r} of {where}: {exc}") from None
    return out


def decode_props(props: Mapping[str, Any]) -> dict[str, Any]:
    return {k: decode_value(v) for k, v in props.items()}
