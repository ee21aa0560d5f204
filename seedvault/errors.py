"""The one catalogue of seedvault errors and their stable exit codes.

Every failure an operator can meet is a subclass of :class:`SeedvaultError`. Each class carries a fixed
``exit_code`` (scripts and PostgreSQL's ``restore_command`` branch on them; ``tests/cli/test_exit_codes.py``
pins them) and a one-line, lowercase message with no final period. Messages name objects and ids and never
contain key material, passphrases or credentials: callers pass only names into these constructors.

Exit-code bands: 0 ok, 1 unexpected bug, 2 usage, 3-9 configuration, 10-19 storage, 20-29 integrity,
30-39 keys, 40-49 format, 50-59 database sources/targets, 60-69 concurrency/state.
"""

from __future__ import annotations


class SeedvaultError(Exception):
    """Base of every error seedvault reports to an operator."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        """The message an operator sees: one line, with a hint when there is an obvious next step."""
        text = " ".join(self.message.split())
        if self.hint:
            text += f" (HINT: {' '.join(self.hint.split())})"
        return text


class UsageError(SeedvaultError):
    exit_code = 2


class ConfigError(SeedvaultError):
    exit_code = 3


# --- storage -----------------------------------------------------------------------------------------
class StorageError(SeedvaultError):
    exit_code = 10


class ObjectNotFound(StorageError):
    exit_code = 11


class BackupNotFound(ObjectNotFound):
    exit_code = 12


class PermissionDenied(StorageError):
    exit_code = 13


class StorageUnreachable(StorageError):
    """The endpoint or bucket cannot be reached at all (DNS, refused connection, missing bucket)."""

    exit_code = 14


class TransientStorageError(StorageError):
    """A failure worth retrying (throttling, 5xx, reset connection) after the driver's own retries."""

    exit_code = 15


class ObjectExists(StorageError):
    """An immutable object already exists under that name with other content; seedvault never overwrites."""

    exit_code = 16


class ObjectVanished(StorageError):
    """An object of a backup still being written disappeared before its commit (a concurrent cleanup/prune).

    The backup is not committed (never listed); what was left of it is removed. Worth running again.
    """

    exit_code = 17


# --- integrity -----------------------------------------------------------------------------------------
class IntegrityError(SeedvaultError):
    exit_code = 20


class AuthenticationFailed(IntegrityError):
    """A chunk, key object or manifest failed authentication: it was altered, moved or corrupted."""

    exit_code = 21


class ChecksumMismatch(IntegrityError):
    exit_code = 22


class TruncatedStream(IntegrityError):
    exit_code = 23


class VerificationFailed(IntegrityError):
    """A verify run found problems (the report names each)."""

    exit_code = 24


class WalGap(IntegrityError):
    """A WAL file needed to reach a recovery target (or to make a base backup consistent) is not archived."""

    exit_code = 25


class ForeignWal(IntegrityError):
    """A WAL file belongs to another database system, position or timeline than its name or the plan says."""

    exit_code = 26


# --- keys ----------------------------------------------------------------------------------------------
class KeyError_(SeedvaultError):
    """Base for key problems (named with a trailing underscore to leave the builtin alone)."""

    exit_code = 30


class WrongKey(KeyError_):
    exit_code = 31


class KeyMissing(KeyError_):
    exit_code = 32


class InvalidKey(KeyError_):
    exit_code = 33


# --- format --------------------------------------------------------------------------------------------
class FormatError(SeedvaultError):
    exit_code = 40


class UnsupportedVersion(FormatError):
    exit_code = 41


class MandatoryFeatureUnsupported(FormatError):
    exit_code = 42


# --- databases -----------------------------------------------------------------------------------------
class SourceError(SeedvaultError):
    exit_code = 50


class TargetError(SeedvaultError):
    exit_code = 51


class DatabaseUnreachable(SourceError):
    exit_code = 52


class DatabaseRefused(DatabaseUnreachable):
    """The server answered but refused us for good: wrong password, unknown role or database, no hba entry.

    A subclass of :class:`DatabaseUnreachable` (callers that catch that still do), but with its own code so
    schedulers do not retry it as if the server were down: retrying a wrong password only delays the alarm.
    """

    exit_code = 56


class DatabaseLeftStopped(SourceError):
    """A database the backup stopped could not be started again: a person must start it, now.

    Its own class (and code) so that schedulers never retry it: another attempt would stop it again.
    """

    exit_code = 57


class ToolMissing(SourceError):
    """A client binary (pg_dump, neo4j-admin, ...) was not found or does not fit the server."""

    exit_code = 53


class RestoreVerificationFailed(TargetError):
    exit_code = 54


class RecoveryFailed(TargetError):
    """A point-in-time recovery stopped before it reached its target and promoted (server log line included)."""

    exit_code = 55


# --- state ---------------------------------------------------------------------------------------------
class PipeBroken(SourceError):
    """The stage on the other side of a streaming pipe failed; ``__cause__`` holds its error. Callers report that
    cause (the error that started it); this one surfaces only when the cause is unknown."""

    exit_code = 58


class LockHeld(SeedvaultError):
    exit_code = 60


class WalStale(SeedvaultError):
    """WAL archiving lags or fails: the freshness check's alarm."""

    exit_code = 61


class DrillTargetMissed(SeedvaultError):
    """A DR drill restored and verified, but missed its RTO or RPO target (or left scratch it could not remove).

    Recorded as a failed ``drill`` event before it is raised; a drill whose restore or verification failed
    raises that error (its own code) instead.
    """

    exit_code = 62


class MetricsPushFailed(SeedvaultError):
    """The Pushgateway refused the metrics or could not be reached (the figures themselves were read)."""

    exit_code = 63


class SizeAnomaly(SeedvaultError):
    """A committed, verified backup whose stored size is outside the band around the median of the last ones.

    The backup is kept (it may be right: a big delete), but nothing is pruned on its strength and the run fails
    so that somebody looks.
    """

    exit_code = 64


class StatusAlerting(SeedvaultError):
    """``seedvault status`` found something alerting (a stale backup, a size anomaly, an old key...): every
    alert is in the report; the exit code lets cron and monitoring branch without parsing it."""

    exit_code = 65


class ReplicationIncomplete(SeedvaultError):
    """``seedvault replicate`` could not copy everything: a copy was wrong on arrival twice (its backup's manifest
    was not published at the destination), or a backup it depends on failed. The rest was copied."""

    exit_code = 66


class ReplicationLagging(SeedvaultError):
    """``seedvault replicate --status``: the replica lacks something older than ``replication_max_lag``."""

    exit_code = 67


class Interrupted(SeedvaultError):
    exit_code = 130


def exit_code_for(exc: BaseException) -> int:
    """The exit code for any exception: catalogued ones keep theirs, anything else is a bug (1)."""
    if isinstance(exc, SeedvaultError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return Interrupted.exit_code
    return 1
