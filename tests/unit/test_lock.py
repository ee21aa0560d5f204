"""The dependency lock is complete, current and honest; pyproject declares each dependency once and uses it.

Why: a fresh machine installs from ``requirements.lock`` (README, ``.ci/run``, the postgres-user venv). A lock
out of date with ``pyproject.toml`` would install something else than what was declared and tested; an
unpinned resolution is what made pip backtrack for an hour (issue 11).
"""

from __future__ import annotations

import difflib
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.fixtures import lock

ROOT = lock.ROOT
UV = [sys.executable, "-m", "uv"]
TEST_TOOLS = {"pytest", "pytest-timeout", "pytest-xdist", "moto", "pgserver", "testcontainers", "ruff", "uv"}


def _compile(project: Path, args: list[str], output: Path) -> str:
    """Run ``uv pip compile`` in ``project`` with ``args`` (the lock's own command) writing to ``output``.

    The output file is seeded with the committed lock: uv keeps every pin that still satisfies pyproject, so
    the result differs from the lock only where pyproject asks for something the lock does not give (a
    release published since is no reason for a difference).
    """
    args = list(args)
    args[args.index("-o") + 1] = str(output)
    proc = subprocess.run(
        [*UV, *args[1:], "--no-progress", "--quiet"], cwd=project, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"uv pip compile failed:\n{proc.stderr[-3000:]}"
    return output.read_text()


def _pins(text: str) -> list[str]:
    """The lock without its header comment (which names the output path): pins, markers, hashes, vias."""
    return [line for line in text.splitlines() if not line.startswith("#")]


def _stale(project: Path, tmp_path: Path) -> list[str]:
    """The lines by which ``project``'s lock differs from a fresh compile of its pyproject (empty: current)."""
    committed = (project / "requirements.lock").read_text()
    out = tmp_path / "recompiled.lock"
    out.write_text(committed)
    fresh = _compile(project, lock.refresh_command(committed), out)
    diff = difflib.unified_diff(_pins(committed), _pins(fresh), lineterm="", n=0)
    return [line for line in diff if line[:1] in "+-" and line[:3] not in ("+++", "---")]


def test_lock_is_current_with_pyproject(tmp_path):
    difference = _stale(ROOT, tmp_path)
    assert not difference, (
        "requirements.lock is out of date with pyproject.toml; refresh it with the command in README.md:\n"
        + "\n".join(difference[:40])
    )


def test_a_dependency_added_to_pyproject_makes_the_lock_stale(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "requirements.lock", project)
    text = (ROOT / "pyproject.toml").read_text()
    added = text.replace('"zstandard>=0.22",', '"zstandard>=0.22",\n    "tomli-w>=1",', 1)
    (project / "pyproject.toml").write_text(added)
    difference = _stale(project, tmp_path)
    assert any(line.startswith("+tomli-w==") for line in difference), difference


def test_lock_pins_every_entry_with_hashes():
    entries = lock.entries()
    assert len(entries) > 100
    for entry in entries:
        assert any("--hash=sha256:" in line for line in entry.lines), f"{entry.name} has no hash"
        assert entry.via, f"{entry.name} says nothing of what needs it"


def test_runtime_part_of_the_lock_is_what_a_plain_install_resolves_and_has_no_test_tools(tmp_path):
    """``pip install seedvault`` (no extras) pulls no test tool nor Prefect; the postgres-user venv is that part."""
    runtime = {entry.name for entry in lock.runtime_closure()}
    assert not runtime & (TEST_TOOLS | {"prefect", "prefect-aws"}), runtime & (TEST_TOOLS | {"prefect"})
    assert {"cryptography", "zstandard", "boto3", "psycopg", "psycopg-binary", "neo4j"} <= runtime
    args = [a for a in lock.refresh_command() if a not in ("--all-extras", "--generate-hashes")]
    out = tmp_path / "runtime.lock"
    out.write_text((ROOT / "requirements.lock").read_text())
    alone = {entry.name for entry in lock.entries(_compile(ROOT, args, out))}
    assert alone == runtime


def _declared() -> dict[str, list[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {"dependencies": project["dependencies"], **project["optional-dependencies"]}
    return {
        group: [lock.requirement_name(r) for r in reqs if lock.requirement_name(r) != "seedvault"]
        for group, reqs in groups.items()
    }


def test_each_dependency_is_declared_once():
    names = [name for group in _declared().values() for name in group]
    assert len(names) == len(set(names)), sorted({n for n in names if names.count(n) > 1})


# Where a dependency that is not imported by name is used (pytest plugins, command-line tools).
USED_BY_CONFIG = {
    "pytest-timeout": ("pyproject.toml", r"^timeout = \d+"),
    "pytest-xdist": ("pyproject.toml", r'addopts = ".*-n \d'),
    "ruff": ("tests/unit/test_lint.py", r'"-m", "ruff", "check"'),
    "uv": ("tests/unit/test_lock.py", r'"-m", "uv"'),
    "moto": ("tests/fixtures/s3.py", r'"-m", "moto.server"'),
    "pgserver": ("seedvault/sources/postgres/binaries.py", r'find_spec\("pgserver"\)'),
}


def _imported(module: str) -> bool:
    pattern = re.compile(rf"^\s*(import|from) {re.escape(module)}(\.|\s|$)", re.MULTILINE)
    dirs = ("seedvault", "flows", "tasks", "blocks", "deployments", "tests", "bench")
    return any(pattern.search(path.read_text()) for d in dirs for path in (ROOT / d).rglob("*.py")) or bool(
        pattern.search((ROOT / "demo.py").read_text())
    )


def test_no_dependency_is_declared_unused():
    unused = []
    for name in (n for group in _declared().values() for n in group):
        if name in USED_BY_CONFIG:
            path, pattern = USED_BY_CONFIG[name]
            if not re.search(pattern, (ROOT / path).read_text(), re.MULTILINE):
                unused.append(name)
        elif not _imported(name.replace("-", "_")):
            unused.append(name)
    assert not unused, f"declared in pyproject.toml but never used: {unused}"


def test_engine_imports_only_runtime_dependencies():
    """The engine (``seedvault/``) must run from ``pip install seedvault``: it imports no extra's package."""
    extras = {n.replace("-", "_") for g, names in _declared().items() if g != "dependencies" for n in names}
    offending = sorted(
        f"{path.relative_to(ROOT)}: {module}"
        for path in (ROOT / "seedvault").rglob("*.py")
        for module in re.findall(r"^\s*(?:import|from) (\w+)", path.read_text(), re.MULTILINE)
        if module in extras
    )
    assert not offending, offending


def test_readme_set_up_installs_from_the_lock_and_ci_runs_the_readme_commands():
    from tests.fixtures.readme import readme_commands

    setup, test = readme_commands()
    assert "--no-deps -r requirements.lock" in setup and "--no-deps -e ." in setup and ".[test]" not in setup
    # pip check after the install: --no-deps trusts the lock to be complete, so the set-up proves it is.
    assert setup.index("pip check") > setup.index("-e .") and "pip check" in (ROOT / "RUNBOOK.md").read_text()
    assert setup.endswith("python3 demo.py") and "pytest" in test
    ci = (ROOT / ".ci" / "run").read_text()
    assert "tests.fixtures.readme setup" in ci and "tests.fixtures.readme test" in ci
    assert " ".join(lock.refresh_command()) in (ROOT / "README.md").read_text(), "README must give the refresh command"


def test_the_environment_installed_from_the_lock_without_dependencies_is_complete():
    """``pip install --no-deps -r requirements.lock`` left nothing out: every requirement of every package is met.

    Why ``--no-deps``: with dependency following on, pip 23.2 in hash mode re-resolves a requirement that names
    an extra (prefect's ``httpx[http2]``) against the index and refuses the set-up as unpinned as soon as a
    release newer than the lock's appears; the lock already holds the closure, so nothing needs following.
    """
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "check", "--disable-pip-version-check"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
