"""Repository-wide pytest setup.

Tests run torch on one intra-op thread: the models and tensors in the suite are tiny, where
thread hand-offs cost more than they save, and on a shared 2-core machine two threads per test
process made small-tensor tests 30-100x slower. Subprocess tests (DeepSpeed, CLI) are unaffected.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def pytest_configure(config) -> None:
    import torch

    torch.set_num_threads(1)
