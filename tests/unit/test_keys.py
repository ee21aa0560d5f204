"""Key rotation re-wraps data keys only; the old key works until retired and not after."""

from __future__ import annotations

import json

from seedvault.errors import WrongKey
from seedvault.format import layout
from tests.fixtures.repo import new_key_file
from tests.helpers import run_cli


def _tree_bytes(root, prefix: str) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in (root / prefix).rglob("*") if p.is_file()}


def test_rotate_then_retire(local_repo, tmp_path):
    payloads = [bytes([i]) * (200_000 + i) for i in range(3)]
    ids = [
        run_cli(["put", "--label", f"b{i}"], local_repo.env, input=p, check=True).stdout.decode().strip()
        for i, p in enumerate(payloads)
    ]
    old_kid = run_cli(["key", "id"], local_repo.env, check=True).stdout.decode().strip()
    immutable_before = _tree_bytes(local_repo.root, "v1/backups")

    new_key = new_key_file(tmp_path, "new.key")
    res = run_cli(["key", "rotate", "--new-key-file", str(new_key), "--json"], local_repo.env, check=True)
    report = json.loads(res.stdout)
    assert sorted(report["done"]) == sorted(ids) and report["old_key_id"] == old_kid

    # Data objects and manifests are byte-for-byte untouched: only key objects were added.
    assert _tree_bytes(local_repo.root, "v1/backups") == immutable_before
    new_env = dict(local_repo.env, SEEDVAULT_KEY_FILE=str(new_key))
    new_kid = run_cli(["key", "id"], new_env, check=True).stdout.decode().strip()
    for bid, payload in zip(ids, payloads, strict=True):
        assert (local_repo.root / layout.key_object(bid, new_kid)).exists()
        assert run_cli(["get", bid], new_env, check=True).stdout == payload
        assert run_cli(["get", bid], local_repo.env, check=True).stdout == payload  # old key still usable

    # Retiring the key in use is refused; retiring the old one with the new key configured works.
    assert run_cli(["key", "retire", new_kid], new_env).returncode != 0
    run_cli(["key", "retire", old_kid], new_env, check=True)
    for bid, payload in zip(ids, payloads, strict=True):
        res = run_cli(["get", bid], local_repo.env)
        assert res.returncode == WrongKey.exit_code and res.stdout == b""
        assert run_cli(["get", bid], new_env, check=True).stdout == payload
    assert run_cli(["verify", "--all"], new_env).returncode == 0


def test_passphrase_master_key_round_trip(tmp_path):
    from tests.helpers import base_env

    pw = tmp_path / "pass"
    pw.write_text("correct horse battery staple\n")
    env = base_env(SEEDVAULT_REPOSITORY=f"file://{tmp_path / 'repo'}", SEEDVAULT_PASSPHRASE_FILE=str(pw))
    bid = run_cli(["put", "--label", "p"], env, input=b"hello" * 1000, check=True).stdout.decode().strip()
    assert run_cli(["get", bid], env, check=True).stdout == b"hello" * 1000
    show = json.loads(run_cli(["show", bid, "--json"], env, check=True).stdout)
    assert show["key"]["kind"] == "passphrase" and show["key"]["kdf"]["name"] == "scrypt"
    assert show["key"]["kdf"]["n"] >= 2**16
    pw.write_text("wrong horse\n")
    res = run_cli(["get", bid], env)
    assert res.returncode == WrongKey.exit_code and b"wrong key" in res.stderr


def test_cli_rotate_and_retire_cover_archived_wal(local_repo, tmp_path):
    from seedvault.errors import VerificationFailed
    from seedvault.sources.postgres.wal.store import WalStore
    from tests.unit.test_wal_store import SYSID, write_seg

    bid = run_cli(["put", "--label", "b"], local_repo.env, input=b"x" * 1000, check=True).stdout.decode().strip()
    seg = write_seg(tmp_path, 1, 1)
    WalStore(local_repo.repository(), SYSID).push(seg)
    old_kid = run_cli(["key", "id"], local_repo.env, check=True).stdout.decode().strip()
    new_key = new_key_file(tmp_path, "new.key")
    new_env = dict(local_repo.env, SEEDVAULT_KEY_FILE=str(new_key))

    # Retiring before the rotation: one line naming what still needs the old key, exit 24, nothing deleted.
    keys_before = sorted(p for p in local_repo.root.rglob("*.json"))
    res = run_cli(["key", "retire", old_kid], new_env)
    err = res.stderr.decode().strip()
    assert res.returncode == VerificationFailed.exit_code and len(err.splitlines()) == 1, err
    assert f"refusing to retire {old_kid}: 1 backup (first {bid}) and 1 WAL epoch" in err
    assert f"of system {SYSID}" in err and "nothing was deleted" in err
    assert sorted(p for p in local_repo.root.rglob("*.json")) == keys_before

    res = run_cli(["key", "rotate", "--new-key-file", str(new_key)], local_repo.env, check=True)
    assert "re-wrapped 1 backup and 1 WAL epoch under" in res.stdout.decode()
    res = run_cli(["key", "rotate", "--new-key-file", str(new_key), "--json"], local_repo.env, check=True)
    again = json.loads(res.stdout)
    assert again["done"] == [] and again["wal_done"] == [] and len(again["wal_skipped"]) == 1
    res = run_cli(["key", "retire", old_kid], new_env, check=True)
    assert res.stdout.decode() == f"retired {old_kid} from 1 backup and 1 WAL epoch\n"

    out = tmp_path / "fetched"
    res = run_cli(["wal-fetch", "--system-id", str(SYSID), seg.name, str(out)], new_env)
    assert res.returncode == 0, res.stderr
    assert out.read_bytes() == seg.read_bytes()
    assert run_cli(["wal-fetch", "--system-id", str(SYSID), seg.name, str(out)], local_repo.env).returncode != 0
