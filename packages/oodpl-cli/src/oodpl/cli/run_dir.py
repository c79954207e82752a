"""The run directory every ``oodpl`` run writes.

Layout::

    runs/<name>/
      config.yaml            resolved config (every key, after --set overrides)
      env.json               environment summary: versions, device, seed, command line, git commit
      metrics.jsonl          one JSON object per line, appended and fsync'ed as training goes
      metric_meanings.json   optional one-line meanings of custom metrics (for the report)
      checkpoints/           model checkpoints (safetensors, written by the trainers)
      results/*.json         structured results (schema: oodpl.cli.report package docstring)
      report.md, report_files/*.png, report.html

``metrics.jsonl`` records are ``{"step": int, "phase": "train"|"eval"|..., "time": unix seconds,
["epoch": float], <metric>: number, ...}``; non-finite values are refused (ValueError naming the
metric and step) rather than written as invalid JSON. ``env.json`` never holds environment
variable values whose names look like credentials (KEY, TOKEN, SECRET, PASSWORD...): only an
allowlist of runtime variables is recorded, the command line is redacted, and every written text
is scrubbed of the values of credential-like variables.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import numbers
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from oodpl.cli.errors import BadInputError, PathNotFoundError

CONFIG_FILE = "config.yaml"
ENV_FILE = "env.json"
METRICS_FILE = "metrics.jsonl"
MEANINGS_FILE = "metric_meanings.json"
CHECKPOINTS_DIR = "checkpoints"
RESULTS_DIR = "results"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"

VERSIONED_PACKAGES = (
    "oodpl-core",
    "oodpl-models",
    "oodpl-data",
    "oodpl-cli",
    "torch",
    "transformers",
    "peft",
    "deepspeed",
    "datasets",
    "safetensors",
    "openai",
    "numpy",
    "matplotlib",
    "click",
    "rich",
    "pyyaml",
)
RECORDED_ENV_VARS = (
    "CUDA_VISIBLE_DEVICES",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "PYTORCH_CUDA_ALLOC_CONF",
)
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH", re.IGNORECASE)
_RESERVED = {"step", "phase", "time", "epoch"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# ------------------------------------------------------------------------------ secrets
def _secret_values() -> list[str]:
    values = [v for k, v in os.environ.items() if _SECRET_NAME.search(k) and len(v) >= 6]
    return sorted(set(values), key=len, reverse=True)


def scrub_secrets(text: str) -> str:
    """Replace the value of every credential-like environment variable in ``text`` by ``***``."""
    for value in _secret_values():
        text = text.replace(value, "***")
    return text


def redact_command(argv: Sequence[str]) -> list[str]:
    """The command line with values of credential-like options (``--api-key X``) replaced."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append("***")
            hide_next = False
            continue
        name, sep, _ = arg.partition("=")
        if _SECRET_NAME.search(name) and (sep or arg.startswith("-")):
            if sep:
                out.append(f"{name}=***")
            else:
                out.append(arg)
                hide_next = True
            continue
        out.append(scrub_secrets(arg))
    return out


# -------------------------------------------------------------------------- environment
def package_versions(names: Sequence[str] = VERSIONED_PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution, ``None`` when absent."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def device_summary() -> dict[str, Any]:
    """CPU count and, when torch is installed, the accelerator torch sees."""
    info: dict[str, Any] = {"cpu_count": os.cpu_count(), "accelerator": "cpu"}
    try:
        import torch
    except ImportError:
        info["torch"] = None
        return info
    info["torch_threads"] = torch.get_num_threads()
    info["cuda_available"] = torch.cuda.is_available()
    if info["cuda_available"]:
        info["accelerator"] = "cuda"
        info["cuda_version"] = torch.version.cuda
        info["cuda_devices"] = [
            torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
        ]
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        info["accelerator"] = "mps"
    return info


def git_commit(directory: str | Path | None = None) -> dict[str, Any] | None:
    """``{"commit": sha, "dirty": bool}`` of the checkout holding ``directory``, else ``None``."""
    where = str(directory or Path(__file__).resolve().parent)
    try:
        sha = subprocess.run(
            ["git", "-C", where, "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", where, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": sha, "dirty": bool(status.strip())} if sha else None


def environment_summary(
    *, seed: int | None = None, command: Sequence[str] | None = None
) -> dict[str, Any]:
    """What env.json holds: time, command, seed, Python, platform, versions, device, git."""
    env = {
        name: os.environ[name]
        for name in RECORDED_ENV_VARS
        if name in os.environ and not _SECRET_NAME.search(name)
    }
    return {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": redact_command(list(sys.argv if command is None else command)),
        "seed": seed,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "device": device_summary(),
        "git": git_commit(),
        "environment": env,
    }


# ------------------------------------------------------------------------------- files
def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and rename (no half-written files)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _metric_value(key: str, value: Any, step: int) -> float | int:
    if hasattr(value, "item") and not isinstance(value, numbers.Number):
        value = value.item()  # 0-d tensors
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"metric '{key}' at step {step} must be a number, got {value!r}")
    if not float(value) == float(value) or abs(float(value)) == float("inf"):
        raise ValueError(f"metric '{key}' at step {step} is not finite: {value!r}")
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl; a truncated last line (crash mid-write) is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):  # last line without newline: an interrupted append
                break
            raise ValueError(f"{path}:{number}: invalid JSON: {exc.msg}") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object per line")
        records.append(record)
    return records


class RunDir:
    """A run directory (see module docstring). ``RunDir(path)`` opens an existing one."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise PathNotFoundError(self.path, "run directory")

    @classmethod
    def create(
        cls,
        root: str | Path,
        name: str,
        *,
        overwrite: bool = False,
    ) -> RunDir:
        """Make ``root/name`` with its ``checkpoints/`` and ``results/`` subdirectories.

        An existing non-empty directory is an error unless ``overwrite``; overwrite only
        replaces directories that look like runs (holding config.yaml or env.json).
        """
        if not name or not _NAME.match(name):
            raise BadInputError(f"invalid run name {name!r}: use letters, digits, '_', '-', '.'")
        path = Path(root) / name
        if path.exists() and not path.is_dir():
            raise BadInputError(f"run directory path is a file: {path}")
        if path.is_dir() and any(path.iterdir()):
            looks_like_run = (path / CONFIG_FILE).exists() or (path / ENV_FILE).exists()
            if not overwrite:
                raise BadInputError(
                    f"run directory already exists: {path}",
                    hint="choose another run name or pass --overwrite",
                )
            if not looks_like_run:
                raise BadInputError(f"refusing to overwrite {path}: it is not an oodpl run")
            shutil.rmtree(path)
        (path / CHECKPOINTS_DIR).mkdir(parents=True, exist_ok=True)
        (path / RESULTS_DIR).mkdir(exist_ok=True)
        return cls(path)

    @classmethod
    def start(
        cls, config: Any, *, overwrite: bool = False, command: Sequence[str] | None = None
    ) -> RunDir:
        """Create the directory of a run config (``output_dir/name``) and write config + env."""
        name = config.name or cls.default_name(config.kind)
        run = cls.create(config.output_dir, name, overwrite=overwrite)
        run.write_config(config)
        run.write_environment(seed=config.seed, command=command)
        return run

    @staticmethod
    def default_name(kind: str) -> str:
        """``<kind>-<YYYYmmdd-HHMMSS>`` in local time."""
        return f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"

    # paths
    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def env_path(self) -> Path:
        return self.path / ENV_FILE

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    @property
    def results_dir(self) -> Path:
        return self.path / RESULTS_DIR

    # writers
    def write_config(self, config: Any) -> Path:
        """Write the resolved config (a RunConfig) as config.yaml."""
        from oodpl.cli.config.loader import dump_config

        atomic_write_text(self.config_path, scrub_secrets(dump_config(config)))
        return self.config_path

    def write_environment(
        self, *, seed: int | None = None, command: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """Write env.json (see :func:`environment_summary`) and return what was written."""
        summary = environment_summary(seed=seed, command=command)
        atomic_write_text(self.env_path, scrub_secrets(json.dumps(summary, indent=2)) + "\n")
        return summary

    def log_metrics(
        self,
        step: int,
        metrics: Mapping[str, Any],
        *,
        phase: str = "train",
        epoch: float | None = None,
    ) -> dict[str, Any]:
        """Append one record to metrics.jsonl and fsync it; returns the record."""
        if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
            raise ValueError(f"metrics step must be an integer >= 0, got {step!r}")
        record: dict[str, Any] = {"step": int(step), "phase": phase, "time": round(time.time(), 3)}
        if epoch is not None:
            record["epoch"] = _metric_value("epoch", epoch, int(step))
        for key, value in metrics.items():
            if not isinstance(key, str) or not key or key in _RESERVED:
                raise ValueError(f"invalid metric name {key!r} at step {step} (reserved or empty)")
            record[key] = _metric_value(key, value, int(step))
        with open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, allow_nan=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        return record

    def read_metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.metrics_path)

    def checkpoint_dir(self, step: int | str) -> Path:
        """``checkpoints/step-00000100`` (or ``checkpoints/<name>``), created."""
        name = f"step-{step:08d}" if isinstance(step, int) else str(step)
        if not _NAME.match(name):
            raise ValueError(f"invalid checkpoint name {name!r}")
        path = self.checkpoints_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def write_result(self, name: str, result: Any) -> Path:
        """Validate and write ``results/<name>.json`` (a report Section or its JSON dict)."""
        from oodpl.cli.report.result_files import write_result

        if not _NAME.match(name) or name.endswith(".json"):
            raise ValueError(f"invalid result name {name!r}: use letters, digits, '_', '-', '.'")
        return write_result(self.results_dir / f"{name}.json", result)

    def describe_metrics(self, meanings: Mapping[str, str]) -> Path:
        """Merge one-line meanings of custom metrics into metric_meanings.json."""
        for key, text in meanings.items():
            if not isinstance(text, str) or not text.strip() or "\n" in text:
                raise ValueError(f"meaning of metric '{key}' must be one non-empty line")
        path = self.path / MEANINGS_FILE
        merged = {**self.metric_meanings(), **meanings}
        atomic_write_text(path, json.dumps(merged, indent=2, sort_keys=True) + "\n")
        return path

    def metric_meanings(self) -> dict[str, str]:
        path = self.path / MEANINGS_FILE
        if not path.exists():
            return {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: invalid JSON: {exc.msg}") from None
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise ValueError(f"{path}: expected an object of metric name -> meaning")
        return data

    def build_report(self, *, strict: bool = False) -> tuple[Path, Path]:
        """(Re)build report.md and report.html from this directory's files."""
        from oodpl.cli.report.builder import build_report

        return build_report(self.path, strict=strict)
