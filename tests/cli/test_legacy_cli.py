"""`seedvault legacy decrypt` on files made by the real openssl CLI of the old pipeline."""

from __future__ import annotations

import hashlib
import os
import subprocess

from seedvault.errors import ChecksumMismatch, WrongKey
from tests.helpers import base_env, run_cli


def _old_pipeline(tmp_path, payload: bytes, passphrase: str):
    src = tmp_path / "dump.sql"
    src.write_bytes(payload)
    pw = tmp_path / "legacy.pass"
    pw.write_text(passphrase + "\n")
    enc = tmp_path / "dump.sql.gz.enc"
    with open(enc, "wb") as out:
        gz = subprocess.Popen(["gzip", "-c", str(src)], stdout=subprocess.PIPE)
        subprocess.run(
            ["openssl", "enc", "-aes-256-cbc", "-salt", "-pbkdf2", "-iter", "100000", "-pass", f"file:{pw}"],
            stdin=gz.stdout,
            stdout=out,
            check=True,
        )
        gz.wait()
    digest = hashlib.sha256(enc.read_bytes()).hexdigest()
    (tmp_path / "dump.sql.gz.enc.sha256").write_text(f"{digest}  dump.sql.gz.enc\n")
    return enc, pw


def test_legacy_decrypt_cli(tmp_path):
    payload = os.urandom(300_000) + b"COPY public.metrics FROM stdin;\n" * 20000
    enc, pw = _old_pipeline(tmp_path, payload, "old-platform-passphrase-2019")
    env = base_env(SEEDVAULT_LEGACY_PASSPHRASE_FILE=str(pw))
    res = run_cli(["legacy", "decrypt", str(enc)], env, check=True)
    assert res.stdout == payload
    out = tmp_path / "restored.sql"
    run_cli(["legacy", "decrypt", str(enc), "-o", str(out)], env, check=True)
    assert out.read_bytes() == payload

    bad = tmp_path / "bad.pass"
    bad.write_text("not-the-passphrase\n")
    res = run_cli(["legacy", "decrypt", str(enc), "--passphrase-file", str(bad), "-o", str(tmp_path / "x")], env)
    assert res.returncode == WrongKey.exit_code and b"wrong passphrase" in res.stderr
    assert not (tmp_path / "x").exists()

    (tmp_path / "dump.sql.gz.enc.sha256").write_text("0" * 64 + "  dump.sql.gz.enc\n")
    res = run_cli(["legacy", "decrypt", str(enc)], env)
    assert res.returncode == ChecksumMismatch.exit_code and res.stdout == b""
    assert len(res.stderr.decode().strip().splitlines()) == 1
