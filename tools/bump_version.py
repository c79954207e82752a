#!/usr/bin/env python3
"""Bump one oodpl package's version and keep its siblings' ranges consistent.

Usage::

    python tools/bump_version.py oodpl-core minor            # 0.1.0 -> 0.2.0
    python tools/bump_version.py oodpl-core 0.1.5 --dry-run  # show what would change

What it does, for package P at version V -> V':

1. ``packages/P/pyproject.toml``: ``version = "V'"`` (the [project] table);
2. ``packages/P/src/oodpl/<name>/__init__.py``: ``__version__ = "V'"``;
3. ``packages/P/CHANGELOG.md``: a ``## V' — <date>`` heading above the previous one;
4. every sibling that requires P with a range V' falls outside of (e.g. ``oodpl-core>=0.1,<0.2``
   after a minor bump of a 0.x core) gets the compatible range of V' (``oodpl-core>=0.2,<0.3``;
   ``>=X.Y,<X+1`` from 1.0 on), in dependencies and optional-dependencies alike;
5. prints the release tag to create, ``P-vV'`` (e.g. ``oodpl-core-v0.2.0``); nothing is tagged or
   committed here.

Refuses (exit 2, nothing written) for an unknown package, a version that is not ``X.Y.Z``, a new
version not above the current one, a ``__version__`` that disagrees with the pyproject, a
CHANGELOG that already has the new heading, or uncommitted changes in the files it would edit
(``--allow-dirty`` skips the last check, e.g. outside a git checkout). Standard library only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from check_deps import (
    ROOT,
    Package,
    Violation,
    compatible_range,
    load_packages,
    parse_requirement,
    satisfies,
)

_PLAIN_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")
_QUOTED = re.compile(r"\"(?P<double>[^\"\n]*)\"|'(?P<single>[^'\n]*)'")


class Refusal(Exception):
    """A reason not to bump; the message is shown to the user."""


@dataclass
class Edit:
    path: Path
    before: str
    after: str
    summary: str


@dataclass
class Plan:
    package: str
    old_version: str
    new_version: str
    edits: list[Edit]
    dependents: list[Edit]


def new_version(current: str, request: str) -> str:
    """``major`` / ``minor`` / ``patch`` or an explicit ``X.Y.Z`` above ``current``."""
    match = _PLAIN_VERSION.match(current)
    if match is None:
        raise Refusal(f"current version {current!r} is not X.Y.Z; fix it by hand first")
    major, minor, patch = (int(part) for part in match.groups())
    if request == "major":
        return f"{major + 1}.0.0"
    if request == "minor":
        return f"{major}.{minor + 1}.0"
    if request == "patch":
        return f"{major}.{minor}.{patch + 1}"
    explicit = _PLAIN_VERSION.match(request)
    if explicit is None:
        raise Refusal(f"version {request!r} is not major, minor, patch or X.Y.Z")
    if tuple(int(part) for part in explicit.groups()) <= (major, minor, patch):
        raise Refusal(f"new version {request} must be greater than the current {current}")
    return request


def edit_pyproject_version(package: Package, version: str) -> Edit:
    text = package.pyproject_text
    section = re.search(r"^\[project\]\s*$", text, flags=re.MULTILINE)
    if section is None:
        raise Refusal(f"{package.pyproject}: no [project] table")
    pattern = re.compile(
        r"^(version\s*=\s*)([\"'])" + re.escape(package.version) + r"\2", flags=re.MULTILINE
    )
    match = pattern.search(text, section.end())
    next_table = re.compile(r"^\[", flags=re.MULTILINE).search(text, section.end())
    if match is None or (next_table is not None and match.start() > next_table.start()):
        raise Refusal(f'{package.pyproject}: no version = "{package.version}" in [project]')
    after = text[: match.start()] + f"{match[1]}{match[2]}{version}{match[2]}" + text[match.end() :]
    return Edit(package.pyproject, text, after, f'version = "{version}"')


def edit_dunder_version(package: Package, version: str) -> Edit:
    path = package.init_file
    if not path.is_file():
        raise Refusal(f"{path}: missing (it must hold __version__)")
    text = path.read_text(encoding="utf-8")
    pattern = re.compile(r"^(__version__\s*=\s*)([\"'])([^\"']*)\2", flags=re.MULTILINE)
    matches = list(pattern.finditer(text))
    if len(matches) != 1:
        raise Refusal(f"{path}: expected exactly one __version__ assignment, found {len(matches)}")
    match = matches[0]
    if match[3] != package.version:
        raise Refusal(
            f"{path}: __version__ is {match[3]!r} but pyproject says {package.version!r}; "
            "make them agree first"
        )
    after = text[: match.start()] + f"{match[1]}{match[2]}{version}{match[2]}" + text[match.end() :]
    return Edit(path, text, after, f'__version__ = "{version}"')


def edit_changelog(package: Package, version: str, today: dt.date) -> Edit:
    path = package.directory / "CHANGELOG.md"
    text = path.read_text(encoding="utf-8") if path.is_file() else f"# Changelog — {package.name}\n"
    if re.search(rf"^##\s+v?{re.escape(version)}\b", text, flags=re.MULTILINE):
        raise Refusal(f"{path}: already has a heading for {version}")
    heading = f"## {version} — {today.isoformat()}\n\n- Version bump from {package.version}.\n\n"
    first = re.search(r"^## ", text, flags=re.MULTILINE)
    if first is None:
        after = text.rstrip("\n") + "\n\n" + heading.rstrip("\n") + "\n"
    else:
        after = text[: first.start()] + heading + text[first.start() :]
    return Edit(path, text, after, f"heading ## {version}")


def edit_dependents(target: Package, version: str, packages: list[Package]) -> list[Edit]:
    """Siblings whose requirement on ``target`` excludes ``version`` get its compatible range."""
    edits = []
    new_range = compatible_range(version)
    for package in packages:
        if package.name == target.name:
            continue
        changed: list[str] = []

        def rewrite(match: re.Match[str], changed: list[str] = changed) -> str:
            quote = '"' if match["double"] is not None else "'"
            body = match["double"] if match["double"] is not None else match["single"]
            try:
                requirement = parse_requirement(body)
                if requirement.name != target.name or satisfies(version, requirement.spec):
                    return match[0]
            except ValueError:  # not a requirement string, or one with a malformed specifier
                return match[0]
            head = body[: len(body) - len(body.lstrip())]
            name_and_extras = re.match(r"\s*[A-Za-z0-9._-]+\s*(?:\[[^\]]*\])?", body)
            assert name_and_extras is not None  # parse_requirement succeeded
            marker = body[body.index(";") :] if ";" in body else ""
            new_body = f"{head}{name_and_extras[0].strip()}{new_range}{marker}"
            changed.append(f"{body} -> {new_body}")
            return f"{quote}{new_body}{quote}"

        text = package.pyproject_text
        after = _QUOTED.sub(rewrite, text)
        if changed:
            edits.append(Edit(package.pyproject, text, after, "; ".join(changed)))
    return edits


def dirty_files(root: Path, paths: list[Path]) -> list[str]:
    """Paths among ``paths`` with uncommitted changes; ``Refusal`` if git cannot tell."""
    relative = [str(path.relative_to(root)) for path in paths]
    try:
        result = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", *relative],
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError as error:
        raise Refusal("git not found; pass --allow-dirty to bump without the check") from error
    if result.returncode != 0:
        raise Refusal(
            f"cannot check for uncommitted changes ({result.stderr.strip() or 'git failed'}); "
            "pass --allow-dirty to bump anyway"
        )
    return [line[3:] for line in result.stdout.splitlines() if line.strip()]


def plan(root: Path, name: str, request: str, *, allow_dirty: bool, today: dt.date) -> Plan:
    """Every edit the bump makes, computed without writing anything."""
    problems: list[Violation] = []
    packages = load_packages(root, problems)
    if problems:
        listing = "\n".join(problem.render(root) for problem in problems)
        raise Refusal(f"cannot read the packages:\n{listing}")
    by_name = {package.name: package for package in packages}
    if name not in by_name:
        raise Refusal(f"unknown package {name!r}; known: {', '.join(sorted(by_name))}")
    target = by_name[name]
    version = new_version(target.version, request)
    edits = [
        edit_pyproject_version(target, version),
        edit_dunder_version(target, version),
        edit_changelog(target, version, today),
    ]
    dependents = edit_dependents(target, version, packages)
    if not allow_dirty:
        touched = [target.directory, *(edit.path for edit in [*edits, *dependents])]
        dirty = dirty_files(root, touched)
        if dirty:
            raise Refusal(
                "uncommitted changes in files this bump touches (commit or stash them, or pass "
                "--allow-dirty): " + ", ".join(sorted(set(dirty)))
            )
    return Plan(name, target.version, version, edits, dependents)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("package", help="distribution name, e.g. oodpl-core")
    parser.add_argument("version", help="major, minor, patch or an explicit X.Y.Z")
    parser.add_argument("--dry-run", action="store_true", help="show the changes, write nothing")
    parser.add_argument("--allow-dirty", action="store_true", help="skip the uncommitted check")
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root (default: here)")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    try:
        bump = plan(
            root, args.package, args.version, allow_dirty=args.allow_dirty, today=dt.date.today()
        )
    except Refusal as refusal:
        print(f"bump_version: refused: {refusal}", file=sys.stderr)
        return 2
    prefix = "(dry run) would change" if args.dry_run else "changed"
    print(f"{bump.package} {bump.old_version} -> {bump.new_version}")
    for edit in [*bump.edits, *bump.dependents]:
        print(f"  {prefix} {edit.path.relative_to(root)}: {edit.summary}")
        if not args.dry_run:
            edit.path.write_text(edit.after, encoding="utf-8")
    if bump.dependents:
        names = ", ".join(edit.path.parent.name for edit in bump.dependents)
        print(f"  dependents with a new range (release them too): {names}")
    if args.dry_run:
        print("(dry run) nothing written")
    print(f"tag to create: {bump.package}-v{bump.new_version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
