#!/usr/bin/env python3
"""Create a virtual environment with all four oodpl packages installed (editable).

Usage::

    python3 tools/setup_env.py          # runtime: torch, the four packages, DeepSpeed
    python3 tools/setup_env.py --dev    # + test and lint tools (pytest, hypothesis, ruff, mypy)

How the torch build is chosen (the only decision that costs gigabytes):

1. a torch already importable in the venv is kept;
2. with an NVIDIA GPU (``nvidia-smi`` answers), the default PyPI build (CUDA) is installed;
3. without one, a CPU build: first a wheel from pip's local ``find-links`` (no index, so nothing is
   downloaded when one lies on disk), then PyTorch's CPU index on Linux, then plain PyPI (which
   is already the CPU build on macOS and Windows).

Set ``OODPL_TORCH_SPEC`` (e.g. ``torch==2.6.0``) to pin the torch requirement, or
``OODPL_TORCH_INDEX`` to force an index URL. Only the standard library is used here, so this runs
on any Python 3.10+ before anything is installed.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["oodpl-core", "oodpl-models", "oodpl-data", "oodpl-cli"]
DEV_TOOLS = ["pytest>=8", "pytest-timeout>=2.3", "hypothesis>=6.100", "ruff>=0.6", "mypy>=1.10"]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def log(message: str) -> None:
    print(f"[setup_env] {message}", flush=True)


def run(cmd: list[str], env: dict[str, str] | None = None, check: bool = True) -> int:
    log(" ".join(cmd))
    return subprocess.run(cmd, env=env, check=check).returncode


def venv_python(venv_dir: Path) -> Path:
    scripts = "Scripts" if os.name == "nt" else "bin"
    return venv_dir / scripts / ("python.exe" if os.name == "nt" else "python")


def has_nvidia_gpu() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    result = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return result.returncode == 0 and "GPU" in result.stdout


def torch_installed(python: Path) -> bool:
    probe = "import torch, sys; print(torch.__version__)"
    result = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
    if result.returncode == 0:
        log(f"torch {result.stdout.strip()} already installed; keeping it")
        return True
    return False


def install_torch(python: Path) -> None:
    pip = [str(python), "-m", "pip", "install"]
    spec = os.environ.get("OODPL_TORCH_SPEC", "torch>=2.4")
    forced_index = os.environ.get("OODPL_TORCH_INDEX")
    if forced_index:
        run([*pip, spec, "--index-url", forced_index])
        return
    if has_nvidia_gpu():
        log("NVIDIA GPU found: installing the default (CUDA) torch build")
        run([*pip, spec])
        return
    log("no GPU found: installing a CPU build of torch")
    # 1. A torch wheel from pip's local find-links (nothing downloaded), then its dependencies.
    local = [*pip, "--no-index", "--no-deps", "--only-binary=:all:", spec]
    if run(local, check=False) == 0:
        version = installed_torch_version(python)
        if version and run([*pip, f"torch=={version}"], check=False) == 0:
            return
    # 2. PyTorch's CPU index on Linux (PyPI's Linux torch is the CUDA build); fail fast offline.
    if platform.system() == "Linux":
        extra = ["--index-url", CPU_INDEX, "--extra-index-url", "https://pypi.org/simple"]
        if run([*pip, "--retries", "1", "--timeout", "20", spec, *extra], check=False) == 0:
            return
    # 3. PyPI (already the CPU build on macOS and Windows).
    run([*pip, spec])


def installed_torch_version(python: Path) -> str | None:
    probe = "import importlib.metadata as m; print(m.version('torch'))"
    result = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else None


def install_packages(python: Path, dev: bool) -> None:
    pip = [str(python), "-m", "pip", "install"]
    editable: list[str] = []
    for name in PACKAGES:
        editable += ["-e", str(ROOT / "packages" / name)]
    run([*pip, *editable])
    # DeepSpeed builds its ops lazily; DS_BUILD_OPS=0 skips compiling them at install time and it
    # must see the torch already installed (no build isolation).
    env = dict(os.environ, DS_BUILD_OPS="0")
    run([*pip, "--no-build-isolation", "deepspeed>=0.16"], env=env)
    if dev:
        run([*pip, *DEV_TOOLS])
        ensure_chromium()


def ensure_chromium() -> None:
    """The HTML-report test renders in headless Chromium; install Debian's package when we can."""
    if any(shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")):
        return
    can_apt = shutil.which("apt-get") is not None and hasattr(os, "geteuid") and os.geteuid() == 0
    if not can_apt:
        log("chromium not found and apt-get unavailable: install Chromium for the browser test")
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update", "-qq"], env=env)
    run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"], env=env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dev", action="store_true", help="also install test and lint tools")
    parser.add_argument("--venv", default=str(ROOT / ".venv"), help="venv directory (.venv)")
    args = parser.parse_args(argv)
    if sys.version_info < (3, 10):  # noqa: UP036 - this script runs before anything is installed
        sys.exit(f"oodpl needs Python 3.10 or newer; this is {platform.python_version()}")
    venv_dir = Path(args.venv)
    python = venv_python(venv_dir)
    if not python.exists():
        log(f"creating virtual environment {venv_dir}")
        venv.EnvBuilder(with_pip=True).create(venv_dir)
    if not torch_installed(python):
        install_torch(python)
    install_packages(python, dev=args.dev)
    log(f"done: activate with `source {venv_dir}/bin/activate`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
