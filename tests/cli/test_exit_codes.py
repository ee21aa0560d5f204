"""Exit codes are a contract (scripts and restore_command branch on them): pin every one."""

from __future__ import annotations

import inspect

from seedvault import errors

PINNED = {
    "SeedvaultError": 1,
    "UsageError": 2,
    "ConfigError": 3,
    "StorageError": 10,
    "ObjectNotFound": 11,
    "BackupNotFound": 12,
    "PermissionDenied": 13,
    "StorageUnreachable": 14,
    "TransientStorageError": 15,
    "ObjectExists": 16,
    "ObjectVanished": 17,
    "IntegrityError": 20,
    "AuthenticationFailed": 21,
    "ChecksumMismatch": 22,
    "TruncatedStream": 23,
    "VerificationFailed": 24,
    "WalGap": 25,
    "ForeignWal": 26,
    "KeyError_": 30,
    "WrongKey": 31,
    "KeyMissing": 32,
    "InvalidKey": 33,
    "FormatError": 40,
    "UnsupportedVersion": 41,
    "MandatoryFeatureUnsupported": 42,
    "SourceError": 50,
    "TargetError": 51,
    "DatabaseUnreachable": 52,
    "ToolMissing": 53,
    "RestoreVerificationFailed": 54,
    "RecoveryFailed": 55,
    "DatabaseRefused": 56,
    "DatabaseLeftStopped": 57,
    "PipeBroken": 58,
    "LockHeld": 60,
    "WalStale": 61,
    "DrillTargetMissed": 62,
    "MetricsPushFailed": 63,
    "SizeAnomaly": 64,
    "StatusAlerting": 65,
    "ReplicationIncomplete": 66,
    "ReplicationLagging": 67,
    "Interrupted": 130,
}


def test_every_error_class_has_its_pinned_code():
    classes = {
        name: cls for name, cls in inspect.getmembers(errors, inspect.isclass) if issubclass(cls, errors.SeedvaultError)
    }
    assert {n: c.exit_code for n, c in classes.items()} == PINNED


def test_one_line_with_hint():
    exc = errors.WrongKey("wrong key:\n  backup x", hint="use the\nother key")
    assert exc.one_line() == "wrong key: backup x (HINT: use the other key)"
