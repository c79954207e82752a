#!/usr/bin/env python3
"""Check the oodpl package dependency graph statically (ARCHITECTURE.md, "Packages and their
boundaries").

Usage::

    python tools/check_deps.py [--root PATH]

Reads every ``packages/*/pyproject.toml`` (tomllib) and every import in ``packages/*/src`` (ast,
including imports inside functions and ``TYPE_CHECKING`` blocks) and reports, as
``file:line: message``:

- internal edges other than cli -> {models, data, core}, models -> core, data -> core (core
  depends on no sibling), in imports and in declared dependencies;
- in core, any import other than torch, the standard library and ``oodpl.core`` itself, and any
  required dependency other than torch;
- third-party imports (and sibling imports) not declared in the package's ``dependencies`` or
  ``optional-dependencies`` (import names map to distributions through ``IMPORT_TO_DISTRIBUTION``);
- sibling requirements that are not a compatible range holding the sibling's current version
  (a lower and an upper bound, current version inside, next breaking version outside);
- a ``src/oodpl/__init__.py`` (``oodpl`` is a PEP 420 namespace) and a ``__version__`` that
  differs from the pyproject version.

Dynamic imports (``importlib.import_module("x")``) are not seen; the import-time test in
tests/test_boundaries.py covers oodpl.core at runtime. Exit status 0 when clean, 1 on any
violation. Standard library only, Python >= 3.10 (on 3.10, which lacks ``tomllib``, it uses
``tomli`` or the copy pip vendors).
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    try:
        import tomli as tomllib
    except ImportError:
        from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent

# short name -> siblings it may import / depend on (ARCHITECTURE.md: cli -> {models, data} -> core)
ALLOWED_INTERNAL: dict[str, frozenset[str]] = {
    "core": frozenset(),
    "models": frozenset({"core"}),
    "data": frozenset({"core"}),
    "cli": frozenset({"core", "models", "data"}),
}
# third-party modules oodpl.core may import (besides the standard library and itself)
CORE_THIRD_PARTY = frozenset({"torch"})
# import name -> distribution name, where they differ beyond PEP 503 normalisation
IMPORT_TO_DISTRIBUTION = {
    "yaml": "pyyaml",
    "sklearn": "scikit-learn",
    "PIL": "pillow",
    "cv2": "opencv-python",
    "attr": "attrs",
    "bs4": "beautifulsoup4",
    "dateutil": "python-dateutil",
    "google": "protobuf",
    "jwt": "pyjwt",
    "dotenv": "python-dotenv",
}
DIST_PREFIX = "oodpl-"
NAMESPACE = "oodpl"

_REQUIREMENT = re.compile(
    r"^\s*(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*"
    r"(?:\[(?P<extras>[^\]]*)\])?\s*(?P<spec>[^;]*?)\s*(?:;(?P<marker>.*))?$"
)
_CLAUSE = re.compile(r"^\s*(?P<op>===|~=|==|!=|<=|>=|<|>)\s*(?P<version>[^\s,]+)\s*$")
_RELEASE = re.compile(r"^v?(\d+(?:\.\d+)*)")


@dataclass(frozen=True)
class Violation:
    path: Path
    line: int
    message: str

    def render(self, root: Path) -> str:
        try:
            shown = self.path.relative_to(root)
        except ValueError:
            shown = self.path
        return f"{shown}:{self.line}: {self.message}"


@dataclass(frozen=True)
class Requirement:
    name: str  # PEP 503-normalised distribution name
    spec: str  # version specifier, e.g. ">=0.1,<0.2" ("" if none)
    raw: str


@dataclass
class Package:
    directory: Path
    pyproject: Path
    pyproject_text: str
    name: str  # distribution name, e.g. "oodpl-core"
    version: str
    required: list[Requirement] = field(default_factory=list)
    optional: list[Requirement] = field(default_factory=list)

    @property
    def short(self) -> str:
        return self.name[len(DIST_PREFIX) :]

    @property
    def source_dir(self) -> Path:
        return self.directory / "src" / NAMESPACE / self.short

    @property
    def init_file(self) -> Path:
        return self.source_dir / "__init__.py"

    def declared(self) -> set[str]:
        return {req.name for req in [*self.required, *self.optional]}

    def line_of(self, needle: str) -> int:
        """1-based line of the first occurrence of ``needle`` in the pyproject (1 if absent)."""
        for number, line in enumerate(self.pyproject_text.splitlines(), start=1):
            if needle in line:
                return number
        return 1


# --------------------------------------------------------------------------- versions


def normalize_name(name: str) -> str:
    """PEP 503 normalisation: lower case, runs of ``-_.`` become ``-``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_requirement(text: str) -> Requirement:
    """Parse a PEP 508 requirement string enough for this check (name, extras, specifier)."""
    match = _REQUIREMENT.match(text)
    if match is None:
        raise ValueError(f"cannot parse requirement {text!r}")
    return Requirement(normalize_name(match["name"]), match["spec"].strip(), text)


def release(version: str) -> tuple[int, ...]:
    """The release segment of a version string: ``"0.2.1rc1"`` -> ``(0, 2, 1)``."""
    match = _RELEASE.match(version.strip())
    if match is None:
        raise ValueError(f"not a version: {version!r}")
    return tuple(int(part) for part in match.group(1).split("."))


def _pad(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    width = max(len(a), len(b))
    return a + (0,) * (width - len(a)), b + (0,) * (width - len(b))


def parse_specifier(spec: str) -> list[tuple[str, str]]:
    """``">=0.1,<0.2"`` -> ``[(">=", "0.1"), ("<", "0.2")]``; ``ValueError`` if malformed."""
    if not spec.strip():
        return []
    clauses = []
    for clause in spec.split(","):
        match = _CLAUSE.match(clause)
        if match is None:
            raise ValueError(f"cannot parse version clause {clause.strip()!r}")
        clauses.append((match["op"], match["version"]))
    return clauses


def satisfies(version: str, spec: str) -> bool:
    """Whether ``version`` lies in ``spec`` (release segments only; enough for sibling ranges)."""
    current = release(version)
    for op, bound_text in parse_specifier(spec):
        wildcard = bound_text.endswith(".*")
        bound = release(bound_text[:-2] if wildcard else bound_text)
        if op in ("==", "===", "!=") and wildcard:
            equal = current[: len(bound)] == bound
        else:
            left, right = _pad(current, bound)
            equal = left == right
        left, right = _pad(current, bound)
        ok = {
            "==": equal,
            "===": equal,
            "!=": not equal,
            ">=": left >= right,
            ">": left > right,
            "<=": left <= right,
            "<": left < right,
            "~=": left >= right and current[: len(bound) - 1] == bound[:-1],
        }[op]
        if not ok:
            return False
    return True


def next_breaking(version: str) -> str:
    """First version SemVer allows to break ``version``'s API: 0.Y.Z -> 0.(Y+1).0, X -> X+1."""
    parts = (*release(version), 0, 0)
    major, minor = parts[0], parts[1]
    return f"0.{minor + 1}.0" if major == 0 else f"{major + 1}.0.0"


def compatible_range(version: str) -> str:
    """The sibling range dependents declare: ``>=0.Y,<0.(Y+1)`` or ``>=X.Y,<(X+1)`` for X >= 1."""
    parts = (*release(version), 0, 0)
    major, minor = parts[0], parts[1]
    upper = f"0.{minor + 1}" if major == 0 else f"{major + 1}"
    return f">={major}.{minor},<{upper}"


# --------------------------------------------------------------------------- loading


def load_packages(root: Path, violations: list[Violation]) -> list[Package]:
    packages = []
    for pyproject in sorted((root / "packages").glob("*/pyproject.toml")):
        text = pyproject.read_text(encoding="utf-8")
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            violations.append(Violation(pyproject, 1, f"invalid TOML: {error}"))
            continue
        project = data.get("project", {})
        name, version = project.get("name"), project.get("version")
        if not isinstance(name, str) or not name.startswith(DIST_PREFIX):
            violations.append(
                Violation(pyproject, 1, f"[project].name must be oodpl-*, got {name!r}")
            )
            continue
        if not isinstance(version, str):
            violations.append(Violation(pyproject, 1, "[project].version must be a string"))
            continue
        package = Package(pyproject.parent, pyproject, text, normalize_name(name), version)
        for raw in project.get("dependencies", []):
            package.required.append(_requirement(package, raw, violations))
        for extra, items in project.get("optional-dependencies", {}).items():
            for raw in items:
                package.optional.append(_requirement(package, raw, violations, extra))
        package.required = [req for req in package.required if req is not None]
        package.optional = [req for req in package.optional if req is not None]
        packages.append(package)
    if not packages:
        violations.append(Violation(root / "packages", 0, "no packages/*/pyproject.toml found"))
    return packages


def _requirement(
    package: Package, raw: str, violations: list[Violation], extra: str | None = None
) -> Requirement | None:
    try:
        return parse_requirement(raw)
    except ValueError as error:
        where = f" (optional-dependencies.{extra})" if extra else ""
        line = package.line_of(raw)
        violations.append(Violation(package.pyproject, line, f"{error}{where}"))
        return None


# --------------------------------------------------------------------------- checks


def module_name(package: Package, path: Path) -> list[str]:
    """Dotted module parts of a source file, e.g. ``["oodpl", "core", "losses"]``."""
    parts = list(path.relative_to(package.directory / "src").with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def imported_modules(package: Package, path: Path, tree: ast.AST) -> list[tuple[int, str]]:
    """``(line, absolute module)`` for every import in ``tree`` (relative ones resolved)."""
    own = module_name(package, path)
    is_package = path.name == "__init__.py"
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = own if is_package else own[:-1]
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            else:
                module = node.module or ""
            if module == NAMESPACE:  # from oodpl import core  -> oodpl.core
                found.extend((node.lineno, f"{NAMESPACE}.{alias.name}") for alias in node.names)
            else:
                found.append((node.lineno, module))
    return found


def import_problem(package: Package, module: str, known: dict[str, Package]) -> str | None:
    """Why ``package`` may not import ``module`` (``None`` if it may)."""
    parts = module.split(".")
    top = parts[0]
    pyproject = _relative(package.pyproject, package.directory.parent.parent)
    if top == NAMESPACE:
        target = parts[1] if len(parts) > 1 else package.short  # bare ``import oodpl``: fine
        allowed = ALLOWED_INTERNAL.get(package.short, frozenset())
        if target == package.short:
            return None
        if target not in known:
            return f"imports unknown package {NAMESPACE}.{target}"
        if target not in allowed:
            listing = _listing(allowed)
            return f"{package.name} must not import {NAMESPACE}.{target} (allowed: {listing})"
        if known[target].name not in package.declared():
            dist = known[target].name
            return f"imports {NAMESPACE}.{target} but {dist} is not declared in {pyproject}"
        return None
    if top in sys.stdlib_module_names or top == "__future__":
        return None
    if package.short == "core" and top not in CORE_THIRD_PARTY:
        allowed_text = _listing(CORE_THIRD_PARTY)
        return f"oodpl.core may import only {allowed_text} and the standard library, not {top}"
    distribution = normalize_name(IMPORT_TO_DISTRIBUTION.get(top, top))
    if distribution not in package.declared():
        return (
            f"imports {top} (distribution {distribution!r}) but {pyproject} does not declare it "
            "in dependencies or optional-dependencies"
        )
    return None


def check_imports(package: Package, known: dict[str, Package], out: list[Violation]) -> int:
    """Check every import in the package's sources; return the number of files read."""
    files = sorted(package.source_dir.rglob("*.py")) if package.source_dir.is_dir() else []
    for path in files:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except SyntaxError as error:
            out.append(Violation(path, error.lineno or 1, f"syntax error: {error.msg}"))
            continue
        for line, module in imported_modules(package, path, tree):
            problem = import_problem(package, module, known)
            if problem is not None:
                out.append(Violation(path, line, problem))
    return len(files)


def check_declarations(package: Package, known: dict[str, Package], out: list[Violation]) -> None:
    """Declared sibling edges, sibling ranges, core's required dependencies."""

    def report(line: int, message: str) -> None:
        out.append(Violation(package.pyproject, line, message))

    allowed = ALLOWED_INTERNAL.get(package.short)
    if allowed is None:
        report(
            package.line_of("name"),
            f"{package.name} is missing from ALLOWED_INTERNAL in tools/check_deps.py",
        )
        allowed = frozenset()
    by_name = {pkg.name: pkg for pkg in known.values()}
    for req in [*package.required, *package.optional]:
        line = package.line_of(req.raw)
        if req.name == package.name or not req.name.startswith(DIST_PREFIX):
            continue  # third-party, or a self-reference in an extra ("oodpl-models[gguf]")
        sibling = by_name.get(req.name)
        if sibling is None:
            report(line, f"unknown sibling {req.name}")
            continue
        if sibling.short not in allowed:
            report(
                line, f"{package.name} must not depend on {req.name} (allowed: {_listing(allowed)})"
            )
        problem = sibling_range_problem(req, sibling)
        if problem is not None:
            report(line, problem)
    if package.short == "core":
        for req in package.required:
            if req.name not in CORE_THIRD_PARTY:
                only = _listing(CORE_THIRD_PARTY)
                report(
                    package.line_of(req.raw), f"oodpl-core may require only {only}, not {req.name}"
                )


def sibling_range_problem(req: Requirement, sibling: Package) -> str | None:
    """Why ``req`` is not a compatible range holding ``sibling``'s current version, or ``None``."""
    expected = (
        f"expected a compatible range such as {sibling.name}{compatible_range(sibling.version)}"
    )
    try:
        clauses = parse_specifier(req.spec)
        has_lower = any(op in (">=", ">", "==", "===", "~=") for op, _ in clauses)
        has_upper = any(op in ("<", "<=", "==", "===", "~=") for op, _ in clauses)
        if not (has_lower and has_upper):
            problem = f"{req.raw!r} needs both a lower and an upper bound"
        elif not satisfies(sibling.version, req.spec):
            problem = f"{req.raw!r} excludes the current {sibling.name} {sibling.version}"
        elif satisfies(next_breaking(sibling.version), req.spec):
            breaking = next_breaking(sibling.version)
            problem = f"{req.raw!r} admits {breaking}, which may break {sibling.name}'s API"
        else:
            return None
    except ValueError as error:
        problem = f"{req.raw!r}: {error}"
    return f"{problem}; {expected}"


def check_layout(package: Package, out: list[Violation]) -> None:
    namespace_init = package.directory / "src" / NAMESPACE / "__init__.py"
    if namespace_init.exists():
        out.append(
            Violation(namespace_init, 1, f"{NAMESPACE} is a PEP 420 namespace: delete this file")
        )
    if not package.init_file.is_file():
        out.append(Violation(package.init_file, 0, "missing package __init__.py"))
        return
    text = package.init_file.read_text(encoding="utf-8")
    match = re.search(r"^__version__\s*=\s*[\"']([^\"']+)[\"']", text, flags=re.MULTILINE)
    if match is None:
        out.append(Violation(package.init_file, 1, 'no __version__ = "..." assignment'))
    elif match.group(1) != package.version:
        line = text[: match.start()].count("\n") + 1
        out.append(
            Violation(
                package.init_file,
                line,
                f"__version__ {match.group(1)!r} differs from the pyproject version "
                f"{package.version!r}",
            )
        )


def _listing(names: frozenset[str] | set[str]) -> str:
    return ", ".join(sorted(names)) if names else "none"


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def check(root: Path) -> tuple[list[Violation], int, int]:
    """All violations under ``root``; also the number of packages and source files read."""
    violations: list[Violation] = []
    packages = load_packages(root, violations)
    known = {package.short: package for package in packages}
    n_files = 0
    for package in packages:
        check_layout(package, violations)
        check_declarations(package, known, violations)
        n_files += check_imports(package, known, violations)
    return violations, len(packages), n_files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root (default: here)")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    violations, n_packages, n_files = check(root)
    for violation in violations:
        print(violation.render(root))
    if violations:
        print(f"check_deps: {len(violations)} violation(s)", file=sys.stderr)
        return 1
    print(f"check_deps: OK ({n_packages} packages, {n_files} source files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
