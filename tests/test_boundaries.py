"""Package boundaries (ARCHITECTURE.md): oodpl-core is torch-only at import time and at install
time, and tools/check_deps.py enforces the dependency graph statically.

- importing oodpl.core and every one of its submodules loads none of the heavy ecosystem;
- resolving ``pip install packages/oodpl-core`` pulls torch and torch's own dependencies only;
- check_deps passes on the repository and fails, naming file:line, on synthetic bad trees;
- (slow) a real install of oodpl-core into a bare venv.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
CORE_DIR = REPO / "packages" / "oodpl-core"
CHECK_DEPS = REPO / "tools" / "check_deps.py"

# top-level import names oodpl.core must never load
HEAVY_MODULES = frozenset(
    {
        "transformers",
        "peft",
        "deepspeed",
        "datasets",
        "openai",
        "accelerate",
        "safetensors",
        "tokenizers",
        "huggingface_hub",
        "pyarrow",
        "pandas",
        "click",
        "rich",
        "matplotlib",
        "yaml",
    }
)
HEAVY_SIBLINGS = frozenset({"oodpl.models", "oodpl.data", "oodpl.cli"})
# distributions installing oodpl-core must never pull in
HEAVY_DISTRIBUTIONS = frozenset(
    canonicalize_name(name)
    for name in (
        "transformers",
        "peft",
        "deepspeed",
        "datasets",
        "openai",
        "accelerate",
        "safetensors",
        "tokenizers",
        "huggingface-hub",
        "click",
        "rich",
        "matplotlib",
        "pyyaml",
        "oodpl-models",
        "oodpl-data",
        "oodpl-cli",
    )
)

IMPORT_PROBE = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys
    {extra}
    import oodpl.core
    imported = ["oodpl.core"]
    for info in pkgutil.walk_packages(oodpl.core.__path__, "oodpl.core."):
        importlib.import_module(info.name)
        imported.append(info.name)
    heavy = set({heavy!r})
    siblings = set({siblings!r})
    loaded = sorted(
        name for name in sys.modules
        if name.split(".")[0] in heavy or ".".join(name.split(".")[:2]) in siblings
    )
    print(json.dumps({{"imported": imported, "loaded": loaded}}))
    """
)


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return env


def run_import_probe(extra: str = "") -> dict[str, list[str]]:
    code = IMPORT_PROBE.format(
        extra=extra, heavy=sorted(HEAVY_MODULES), siblings=sorted(HEAVY_SIBLINGS)
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=subprocess_env(),
        cwd=REPO,
    )
    assert result.returncode == 0, f"importing oodpl.core failed:\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- (a) imports


def test_importing_core_and_all_submodules_loads_no_heavy_dependency() -> None:
    report = run_import_probe()
    expected_at_least = {"oodpl.core", "oodpl.core.records", "oodpl.core.moo"}
    assert expected_at_least <= set(report["imported"]), report["imported"]
    assert report["loaded"] == [], f"oodpl.core loaded {report['loaded']}"


def test_import_probe_detects_a_heavy_module() -> None:
    """Positive control: the same probe reports a heavy module when one is loaded."""
    report = run_import_probe(extra="import yaml")
    assert "yaml" in report["loaded"]


# --------------------------------------------------------------------------- (b) install


def installed_torch_version() -> str:
    import torch

    return torch.__version__


def requirement_names(requires_dist: list[str]) -> set[str]:
    """Names of the unconditional requirements (markers evaluated, no extras requested)."""
    names = set()
    for text in requires_dist:
        requirement = Requirement(text)
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            names.add(canonicalize_name(requirement.name))
    return names


def test_pip_resolves_core_to_torch_and_its_dependencies_only(tmp_path: Path) -> None:
    """``pip install --dry-run --report`` of packages/oodpl-core, resolved for real.

    torch is pinned (constraint) to the installed build so the resolver uses the same wheel the
    venv has (a local find-links wheel here); the closure check does not depend on that choice.
    """
    report_path = tmp_path / "report.json"
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(f"torch=={installed_torch_version()}\n")
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--dry-run",
        "--ignore-installed",
        "--quiet",
        "--report",
        str(report_path),
        "-c",
        str(constraints),
        str(CORE_DIR),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"pip could not resolve oodpl-core:\n{result.stderr}"
    report = json.loads(report_path.read_text())
    metadata = {
        canonicalize_name(item["metadata"]["name"]): item["metadata"] for item in report["install"]
    }
    assert "oodpl-core" in metadata and "torch" in metadata, sorted(metadata)
    assert requirement_names(metadata["oodpl-core"].get("requires_dist", [])) == {"torch"}

    # everything else must be reachable from torch through unconditional requirements
    reachable, frontier = set(), ["torch"]
    while frontier:
        name = frontier.pop()
        if name in reachable:
            continue
        reachable.add(name)
        frontier.extend(requirement_names(metadata[name].get("requires_dist", [])) & set(metadata))
    assert set(metadata) - {"oodpl-core"} == reachable, (
        f"not pulled in by torch: {sorted(set(metadata) - {'oodpl-core'} - reachable)}"
    )
    assert not (set(metadata) & HEAVY_DISTRIBUTIONS), sorted(set(metadata) & HEAVY_DISTRIBUTIONS)


# --------------------------------------------------------------------------- (c) check_deps


def run_check_deps(root: Path | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(CHECK_DEPS)]
    if root is not None:
        command += ["--root", str(root)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_check_deps_passes_on_the_repository() -> None:
    result = run_check_deps()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "check_deps: OK (4 packages" in result.stdout


PYPROJECT = """\
[project]
name = "{name}"
version = "{version}"
dependencies = [
{deps}
]
{extra}
"""

GOOD_TREE = {
    "core": ("0.1.0", ["torch>=2.4"], ""),
    "models": ("0.3.1", ["oodpl-core>=0.1,<0.2", "transformers>=4.57"], ""),
    "data": ("0.2.0", ["oodpl-core>=0.1,<0.2", "datasets>=3.0", "pyyaml"], ""),
    "cli": (
        "1.4.0",
        ["oodpl-core>=0.1,<0.2", "oodpl-models>=0.3,<0.4", "oodpl-data~=0.2.0", "click"],
        '[project.optional-dependencies]\nfast = ["oodpl-models[deepspeed]>=0.3,<0.4"]\n',
    ),
}
GOOD_SOURCES = {
    "core/__init__.py": '__version__ = "0.1.0"\n',
    "core/ops.py": "from __future__ import annotations\nimport math\nimport torch\n"
    "from . import ops\nfrom oodpl.core import ops as again\n",
    "models/__init__.py": '__version__ = "0.3.1"\n',
    "models/model.py": "import transformers\nfrom oodpl.core.ops import math\n",
    "data/__init__.py": '__version__ = "0.2.0"\n',
    "data/load.py": "import datasets\n\ndef read():\n    import yaml\n    from ..core import ops\n",
    "cli/__init__.py": '__version__ = "1.4.0"\n',
    "cli/main.py": "import click\nfrom oodpl import data, models\nfrom oodpl.core import ops\n",
}


def write_tree(
    root: Path,
    *,
    sources: dict[str, str] | None = None,
    packages: dict[str, tuple[str, list[str], str]] | None = None,
) -> None:
    for short, (version, deps, extra) in {**GOOD_TREE, **(packages or {})}.items():
        directory = root / "packages" / f"oodpl-{short}"
        (directory / "src" / "oodpl" / short).mkdir(parents=True, exist_ok=True)
        listing = "\n".join(f'    "{dep}",' for dep in deps)
        (directory / "pyproject.toml").write_text(
            PYPROJECT.format(name=f"oodpl-{short}", version=version, deps=listing, extra=extra)
        )
    for relative, text in {**GOOD_SOURCES, **(sources or {})}.items():
        path = root / "packages" / f"oodpl-{relative.split('/')[0]}" / "src" / "oodpl" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_check_deps_passes_on_a_good_synthetic_tree(tmp_path: Path) -> None:
    write_tree(tmp_path)
    result = run_check_deps(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


BAD_SOURCES = [
    pytest.param(
        {"core/bad.py": "import math\nimport torch\nimport transformers\n"},
        "packages/oodpl-core/src/oodpl/core/bad.py:3:",
        "transformers",
        id="core-imports-transformers",
    ),
    pytest.param(
        {"core/lazy.py": "import torch\n\n\ndef f():\n    import numpy as np\n    return np\n"},
        "packages/oodpl-core/src/oodpl/core/lazy.py:5:",
        "numpy",
        id="core-lazy-numpy-import",
    ),
    pytest.param(
        {"data/bad.py": '"""Doc."""\n\nfrom oodpl.models.model import transformers\n'},
        "packages/oodpl-data/src/oodpl/data/bad.py:3:",
        "must not import oodpl.models",
        id="data-imports-models",
    ),
    pytest.param(
        {"data/sub/__init__.py": "", "data/sub/bad.py": "x = 1\nfrom ...models import model\n"},
        "packages/oodpl-data/src/oodpl/data/sub/bad.py:2:",
        "must not import oodpl.models",
        id="data-relative-import-of-models",
    ),
    pytest.param(
        {"models/bad.py": "from oodpl import data\n"},
        "packages/oodpl-models/src/oodpl/models/bad.py:1:",
        "must not import oodpl.data",
        id="models-imports-data",
    ),
    pytest.param(
        {"core/bad.py": "from oodpl.core import ops\nimport oodpl.data\n"},
        "packages/oodpl-core/src/oodpl/core/bad.py:2:",
        "must not import oodpl.data",
        id="core-imports-sibling",
    ),
    pytest.param(
        {"models/bad.py": "import torch\nimport yaml\n"},
        "packages/oodpl-models/src/oodpl/models/bad.py:1:",
        "'torch'",
        id="models-undeclared-torch",
    ),
    pytest.param(
        {"models/more.py": "\n\nimport yaml\n"},
        "packages/oodpl-models/src/oodpl/models/more.py:3:",
        "'pyyaml'",
        id="models-undeclared-pyyaml",
    ),
    pytest.param(
        {"models/../__init__.py": ""},  # i.e. packages/oodpl-models/src/oodpl/__init__.py
        "packages/oodpl-models/src/oodpl/__init__.py:1:",
        "namespace",
        id="namespace-init",
    ),
    pytest.param(
        {"cli/__init__.py": '__version__ = "1.3.9"\n'},
        "packages/oodpl-cli/src/oodpl/cli/__init__.py:1:",
        "__version__",
        id="dunder-version-mismatch",
    ),
]


@pytest.mark.parametrize(("sources", "location", "fragment"), BAD_SOURCES)
def test_check_deps_fails_on_bad_imports(
    tmp_path: Path, sources: dict[str, str], location: str, fragment: str
) -> None:
    write_tree(tmp_path, sources=sources)
    result = run_check_deps(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith(location)]
    assert lines, f"no violation at {location}:\n{result.stdout}"
    assert any(fragment in line for line in lines), result.stdout


BAD_PACKAGES = [
    pytest.param(
        {"data": ("0.2.0", ["oodpl-core>=0.2,<0.3", "datasets", "pyyaml"], "")},
        "packages/oodpl-data/pyproject.toml:5:",
        "excludes the current oodpl-core 0.1.0",
        id="range-excludes-current",
    ),
    pytest.param(
        {"data": ("0.2.0", ["datasets", "oodpl-core>=0.1", "pyyaml"], "")},
        "packages/oodpl-data/pyproject.toml:6:",
        "upper bound",
        id="open-range",
    ),
    pytest.param(
        {"data": ("0.2.0", ["oodpl-core>=0.1,<1", "datasets", "pyyaml"], "")},
        "packages/oodpl-data/pyproject.toml:5:",
        "admits 0.2.0",
        id="range-admits-breaking-release",
    ),
    pytest.param(
        {"core": ("0.1.0", ["torch>=2.4", "numpy"], "")},
        "packages/oodpl-core/pyproject.toml:6:",
        "may require only torch",
        id="core-requires-numpy",
    ),
    pytest.param(
        {
            "models": (
                "0.3.1",
                ["oodpl-core>=0.1,<0.2", "transformers"],
                '[project.optional-dependencies]\nx = ["oodpl-data>=0.2,<0.3"]\n',
            )
        },
        "packages/oodpl-models/pyproject.toml:9:",
        "must not depend on oodpl-data",
        id="models-declares-data",
    ),
    pytest.param(
        {"cli": ("1.4.0", ["oodpl-models>=0.3,<0.4", "oodpl-data~=0.2.0", "click"], "")},
        "packages/oodpl-cli/src/oodpl/cli/main.py:3:",
        "oodpl-core is not declared",
        id="cli-imports-undeclared-core",
    ),
]


@pytest.mark.parametrize(("packages", "location", "fragment"), BAD_PACKAGES)
def test_check_deps_fails_on_bad_declarations(
    tmp_path: Path, packages: dict[str, tuple[str, list[str], str]], location: str, fragment: str
) -> None:
    write_tree(tmp_path, packages=packages)
    result = run_check_deps(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith(location)]
    assert lines, f"no violation at {location}:\n{result.stdout}"
    assert any(fragment in line for line in lines), result.stdout


# --------------------------------------------------------------------------- slow: real install


@pytest.mark.slow
def test_core_installs_alone_into_a_bare_venv(tmp_path: Path) -> None:
    """pip install packages/oodpl-core into a fresh venv: torch comes along, nothing heavy."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(f"torch=={installed_torch_version()}\n")
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "-c", str(constraints), str(CORE_DIR)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert install.returncode == 0, install.stderr
    listing = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=json"],
        capture_output=True,
        text=True,
        check=True,
    )
    installed = {canonicalize_name(item["name"]) for item in json.loads(listing.stdout)}
    assert {"oodpl-core", "torch"} <= installed
    assert not (installed & HEAVY_DISTRIBUTIONS), sorted(installed & HEAVY_DISTRIBUTIONS)

    probe = (
        "import oodpl.core, oodpl.core.moo, torch\n"
        "w = oodpl.core.moo.min_norm_weights(torch.eye(2))\n"
        "assert torch.allclose(w, torch.tensor([0.5, 0.5])), w\n"
        "try:\n    import oodpl.models\nexcept ModuleNotFoundError:\n    print('ok')\n"
    )
    result = subprocess.run(
        [str(python), "-c", probe], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
