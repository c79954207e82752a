"""Tests for tools/bump_version.py on a copy of the repository's packaging files.

The copy holds packages/*/pyproject.toml, CHANGELOG.md and src/oodpl/*/__init__.py, committed to
a throw-away git repository so the tool's uncommitted-changes check runs for real.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: tomli, or the copy pip vendors
    try:
        import tomli as tomllib
    except ImportError:
        from pip._vendor import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
BUMP = REPO / "tools" / "bump_version.py"
CHECK = REPO / "tools" / "check_deps.py"
PACKAGES = ("oodpl-core", "oodpl-models", "oodpl-data", "oodpl-cli")


def git(root: Path, *args: str) -> str:
    result = subprocess.run(
        [
            "git",
            "-C",
            str(root),
            "-c",
            "user.name=test",
            "-c",
            "user.email=test@example.invalid",
            "-c",
            "commit.gpgsign=false",
            *args,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    for package in PACKAGES:
        source = REPO / "packages" / package
        target = root / "packages" / package
        short = package.removeprefix("oodpl-")
        for relative in ("pyproject.toml", "CHANGELOG.md", f"src/oodpl/{short}/__init__.py"):
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / relative, target / relative)
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "copy")
    return root


def run_tool(script: Path, root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(script), *args, "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and ".git" not in path.relative_to(root).parts
    }


def project(root: Path, package: str) -> dict:
    with (root / "packages" / package / "pyproject.toml").open("rb") as handle:
        return tomllib.load(handle)["project"]


def dunder_version(root: Path, package: str) -> str:
    short = package.removeprefix("oodpl-")
    namespace: dict[str, object] = {}
    init = root / "packages" / package / "src" / "oodpl" / short / "__init__.py"
    exec(compile(init.read_text(), str(init), "exec"), namespace)
    return str(namespace["__version__"])


def sibling_specs(root: Path, package: str, sibling: str) -> list[str]:
    """Every requirement string of ``package`` (required and optional) that names ``sibling``."""
    data = project(root, package)
    strings = list(data.get("dependencies", []))
    for items in data.get("optional-dependencies", {}).values():
        strings.extend(items)
    return [s for s in strings if s.split("[")[0].split(">")[0].split("<")[0].strip() == sibling]


def current_versions(root: Path) -> dict[str, str]:
    return {package: project(root, package)["version"] for package in PACKAGES}


def test_minor_bump_updates_versions_dependents_and_changelog(repo_copy: Path) -> None:
    before = current_versions(repo_copy)
    major, minor, _ = (int(part) for part in before["oodpl-core"].split("."))
    assert major == 0, "this test assumes a 0.x core (minor bumps change the compatible range)"
    expected = f"0.{minor + 1}.0"
    old_changelog = (repo_copy / "packages/oodpl-core/CHANGELOG.md").read_text()
    cli_specs_before = {
        sibling: sibling_specs(repo_copy, "oodpl-cli", sibling)
        for sibling in ("oodpl-models", "oodpl-data")
    }

    result = run_tool(BUMP, repo_copy, "oodpl-core", "minor")
    assert result.returncode == 0, result.stderr
    assert f"tag to create: oodpl-core-v{expected}" in result.stdout

    assert project(repo_copy, "oodpl-core")["version"] == expected
    assert dunder_version(repo_copy, "oodpl-core") == expected
    for dependent in ("oodpl-models", "oodpl-data", "oodpl-cli"):
        specs = sibling_specs(repo_copy, dependent, "oodpl-core")
        assert specs == [f"oodpl-core>=0.{minor + 1},<0.{minor + 2}"], (dependent, specs)
        assert project(repo_copy, dependent)["version"] == before[dependent]
    # cli's ranges on models and data are untouched
    for sibling in ("oodpl-models", "oodpl-data"):
        assert sibling_specs(repo_copy, "oodpl-cli", sibling) == cli_specs_before[sibling]

    changelog = (repo_copy / "packages/oodpl-core/CHANGELOG.md").read_text()
    new_lines = changelog.splitlines()
    headings = [line for line in new_lines if line.startswith("## ")]
    assert headings[0].startswith(f"## {expected} — ")
    assert headings[1:] == [line for line in old_changelog.splitlines() if line.startswith("## ")]
    assert changelog.startswith(old_changelog.split("\n## ")[0])

    # the bumped tree is consistent for the dependency checker too
    check = run_tool(CHECK, repo_copy)
    assert check.returncode == 0, check.stdout + check.stderr

    # only the expected files changed
    changed = git(repo_copy, "status", "--porcelain").split("\n")
    changed_paths = sorted(line[3:] for line in changed if line.strip())
    assert changed_paths == sorted(
        [
            "packages/oodpl-core/CHANGELOG.md",
            "packages/oodpl-core/pyproject.toml",
            "packages/oodpl-core/src/oodpl/core/__init__.py",
            "packages/oodpl-models/pyproject.toml",
            "packages/oodpl-data/pyproject.toml",
            "packages/oodpl-cli/pyproject.toml",
        ]
    )
    diff = git(repo_copy, "diff", "--unified=0", "packages/oodpl-models/pyproject.toml")
    removed = [
        line for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")
    ]
    assert len(removed) == 1 and "oodpl-core" in removed[0]


def test_patch_bump_keeps_dependents_untouched(repo_copy: Path) -> None:
    version = project(repo_copy, "oodpl-core")["version"]
    major, minor, patch = (int(part) for part in version.split("."))
    result = run_tool(BUMP, repo_copy, "oodpl-core", "patch")
    assert result.returncode == 0, result.stderr
    expected = f"{major}.{minor}.{patch + 1}"
    assert project(repo_copy, "oodpl-core")["version"] == expected
    assert dunder_version(repo_copy, "oodpl-core") == expected
    changed = sorted(
        line[3:] for line in git(repo_copy, "status", "--porcelain").splitlines() if line.strip()
    )
    assert all(path.startswith("packages/oodpl-core/") for path in changed), changed
    assert f"oodpl-core-v{expected}" in result.stdout


def test_bumping_models_updates_cli_ranges_including_extras(repo_copy: Path) -> None:
    result = run_tool(BUMP, repo_copy, "oodpl-models", "minor")
    assert result.returncode == 0, result.stderr
    new = project(repo_copy, "oodpl-models")["version"]
    minor = int(new.split(".")[1])
    specs = sibling_specs(repo_copy, "oodpl-cli", "oodpl-models")
    assert sorted(specs) == sorted(
        [
            f"oodpl-models>=0.{minor},<0.{minor + 1}",
            f"oodpl-models[deepspeed]>=0.{minor},<0.{minor + 1}",
        ]
    )
    # data does not depend on models and must be untouched
    assert "packages/oodpl-data" not in git(repo_copy, "status", "--porcelain")
    assert run_tool(CHECK, repo_copy).returncode == 0


def test_major_and_explicit_versions(repo_copy: Path) -> None:
    result = run_tool(BUMP, repo_copy, "oodpl-data", "major")
    assert result.returncode == 0, result.stderr
    assert project(repo_copy, "oodpl-data")["version"] == "1.0.0"
    assert sibling_specs(repo_copy, "oodpl-cli", "oodpl-data") == ["oodpl-data>=1.0,<2"]
    git(repo_copy, "commit", "-q", "-am", "data 1.0.0")

    # within 1.x a minor bump stays inside >=1.0,<2: cli is left alone
    result = run_tool(BUMP, repo_copy, "oodpl-data", "1.3.0")
    assert result.returncode == 0, result.stderr
    assert project(repo_copy, "oodpl-data")["version"] == "1.3.0"
    assert sibling_specs(repo_copy, "oodpl-cli", "oodpl-data") == ["oodpl-data>=1.0,<2"]
    assert run_tool(CHECK, repo_copy).returncode == 0


def test_dry_run_changes_nothing(repo_copy: Path) -> None:
    before = snapshot(repo_copy)
    result = run_tool(BUMP, repo_copy, "oodpl-core", "minor", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "(dry run)" in result.stdout
    assert "packages/oodpl-models/pyproject.toml" in result.stdout
    assert "tag to create: oodpl-core-v" in result.stdout
    assert snapshot(repo_copy) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("oodpl-nope", "minor"), "unknown package 'oodpl-nope'"),
        (("oodpl-core", "0.0.1"), "must be greater"),
        (("oodpl-core", "1.2"), "not major, minor, patch or X.Y.Z"),
        (("oodpl-core", "huge"), "not major, minor, patch or X.Y.Z"),
    ],
)
def test_refusals_write_nothing(repo_copy: Path, args: tuple[str, str], message: str) -> None:
    before = snapshot(repo_copy)
    result = run_tool(BUMP, repo_copy, *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert snapshot(repo_copy) == before


def test_dirty_package_is_refused_unless_allowed(repo_copy: Path) -> None:
    init = repo_copy / "packages/oodpl-core/src/oodpl/core/__init__.py"
    (init.parent / "scratch.py").write_text("x = 1\n")
    before = snapshot(repo_copy)
    result = run_tool(BUMP, repo_copy, "oodpl-core", "patch")
    assert result.returncode == 2
    assert "uncommitted" in result.stderr and "scratch.py" in result.stderr
    assert snapshot(repo_copy) == before
    assert run_tool(BUMP, repo_copy, "oodpl-core", "patch", "--allow-dirty").returncode == 0


def test_outside_git_needs_allow_dirty(repo_copy: Path) -> None:
    shutil.rmtree(repo_copy / ".git")
    result = run_tool(BUMP, repo_copy, "oodpl-cli", "patch")
    assert result.returncode == 2 and "--allow-dirty" in result.stderr
    assert run_tool(BUMP, repo_copy, "oodpl-cli", "patch", "--allow-dirty").returncode == 0


def test_inconsistent_dunder_version_is_refused(repo_copy: Path) -> None:
    init = repo_copy / "packages/oodpl-models/src/oodpl/models/__init__.py"
    init.write_text(init.read_text().replace("__version__ = ", "__version__ = '9.9.9'  # ", 1))
    git(repo_copy, "commit", "-q", "-am", "break")
    result = run_tool(BUMP, repo_copy, "oodpl-models", "patch")
    assert result.returncode == 2
    assert "__version__" in result.stderr and "9.9.9" in result.stderr


def test_existing_changelog_heading_is_refused(repo_copy: Path) -> None:
    changelog = repo_copy / "packages/oodpl-core/CHANGELOG.md"
    version = project(repo_copy, "oodpl-core")["version"]
    major, minor, _ = version.split(".")
    changelog.write_text(changelog.read_text() + f"\n## {major}.{int(minor) + 1}.0 — draft\n")
    git(repo_copy, "commit", "-q", "-am", "draft heading")
    result = run_tool(BUMP, repo_copy, "oodpl-core", "minor")
    assert result.returncode == 2 and "already has a heading" in result.stderr
