"""DeepSpeed stays optional: a clear one-line error when absent, never imported eagerly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "workers"))
from ds_worker_common import PYTHON, build_model, worker_env

from oodpl.models.engine import EngineConfig, build_engine
from oodpl.models.engine.deepspeed_engine import (
    DeepSpeedUnavailableError,
    consolidate_deepspeed_state,
)


def test_missing_deepspeed_gives_one_line_install_hint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # makes `import deepspeed` fail
    with pytest.raises(DeepSpeedUnavailableError) as info:
        build_engine(build_model(seed=0), EngineConfig(backend="deepspeed"))
    message = str(info.value)
    assert message.startswith("DeepSpeed is not installed: pip install 'oodpl-models[deepspeed]'")
    assert "\n" not in message
    assert isinstance(info.value, ImportError)
    with pytest.raises(DeepSpeedUnavailableError, match="DeepSpeed is not installed"):
        consolidate_deepspeed_state(tmp_path)


def test_torch_engine_does_not_import_deepspeed() -> None:
    code = (
        "import sys, torch\n"
        "from oodpl.models.engine import EngineConfig, build_engine\n"
        "from oodpl.models.engine.loop import train\n"
        "build_engine(torch.nn.Linear(2, 1), EngineConfig())\n"
        "assert 'deepspeed' not in sys.modules, 'deepspeed was imported'\n"
    )
    proc = subprocess.run(
        [PYTHON, "-c", code], env=worker_env(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
