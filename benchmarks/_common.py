"""Shared helpers of the benchmark scripts: peak memory, timing, synthetic data, hardware.

Never imported by tests. Scripts run as ``python benchmarks/<name>.py`` put this directory on
``sys.path`` first, so ``import _common`` works from any working directory.

Peak memory (:class:`PeakMemory`):

* CUDA: ``torch.cuda.max_memory_allocated()`` minus ``torch.cuda.memory_allocated()`` at the
  start of the measured region (tensors only, after ``reset_peak_memory_stats``);
* CPU with glibc: bytes in use by ``malloc`` (``mallinfo2().uordblks + hblkhd``, where torch's CPU
  tensors live), sampled every 0.5 ms by a background thread, peak minus the value at the start.
  RSS is not used because glibc keeps freed heap pages resident (fragmentation); without glibc the
  RSS high-water mark is used instead (``/proc/self/statm`` sampled, ``getrusage().ru_maxrss``).
  Sampling can miss spikes shorter than 0.5 ms, so treat differences < ~1 MiB as noise.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import platform
import random
import resource
import subprocess
import threading
import time
from collections.abc import Sequence
from typing import Any

import torch

# --- peak memory ----------------------------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _MallInfo2(ctypes.Structure):
    _names = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
    _fields_ = [(name, ctypes.c_size_t) for name in _names.split()]


def _heap_probe():
    """``(read_bytes, label)``: glibc in-use heap bytes if available, else RSS."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        return _rss_bytes, "peak RSS increase"

    def in_use() -> int:
        info = libc.mallinfo2()
        return int(info.uordblks + info.hblkhd)

    return in_use, "peak malloc in-use increase"


class _PeakSampler:
    def __init__(self, read, interval: float = 5e-4) -> None:
        self.read = read
        self.interval = interval
        self.peak = read()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.read())
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.read())


def memory_label(device: torch.device | str) -> str:
    """What :class:`PeakMemory` reports on ``device`` (for table captions)."""
    if torch.device(device).type == "cuda":
        return "CUDA max_memory_allocated increase"
    return _heap_probe()[1]


class PeakMemory:
    """``with PeakMemory(device) as meter: ...`` then ``meter.peak_mib`` (see the module docstring).

    The increase is relative to the start of the ``with`` block, so enter it *before* building
    the model to count weights, optimizer state and activations.
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.peak_bytes = 0
        self._sampler: _PeakSampler | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._before = torch.cuda.memory_allocated(self.device)
        else:
            read, _ = _heap_probe()
            self._read = read
            self._before = read()
            self._maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self._sampler = _PeakSampler(read).__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            assert self._sampler is not None
            self._sampler.__exit__(*exc)
            peak = self._sampler.peak
            maxrss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            if self._read is _rss_bytes and maxrss_after > self._maxrss_before:
                peak = max(peak, maxrss_after)
        self.peak_bytes = max(0, peak - self._before)

    @property
    def peak_mib(self) -> float:
        return self.peak_bytes / 2**20


# --- timing ---------------------------------------------------------------------------------


def synchronize(device: torch.device | str) -> None:
    """Wait for queued kernels (CUDA); no-op on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def steady_rate(stamps: Sequence[float], warmup: int, items_per_step: int) -> tuple[float, float]:
    """``(items/s, median s/step)`` from end-of-step timestamps, ignoring the first ``warmup``.

    ``stamps[i]`` is the end of step ``i + 1``. The rate is measured from the end of step
    ``warmup`` to the end of the last step, so it covers steady-state steps only (the first step
    carries one-off costs: optimizer state, kernel selection, allocator growth).
    """
    if warmup < 1:
        raise ValueError(f"warmup must be >= 1 (step 1 carries one-off setup), got {warmup}")
    if len(stamps) <= warmup:
        raise ValueError(f"need more than warmup={warmup} steps, got {len(stamps)}")
    window = list(stamps[warmup - 1 :])
    durations = sorted(b - a for a, b in itertools.pairwise(window))
    elapsed = window[-1] - window[0]
    return items_per_step * len(durations) / elapsed, durations[len(durations) // 2]


# --- synthetic data with exact token lengths ------------------------------------------------

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"


def word_tokenizer(vocab_size: int = 1024, model_max_length: int = 4096):
    """A word-level tokenizer: ``"w0" … "w{V-5}"`` are one token each, split on whitespace.

    Every text built by :func:`words` tokenises to exactly its number of words, and a prompt
    followed by ``" " + response`` tokenises to the prompt's tokens followed by the response's
    (no merges across the boundary), so oodpl's collator and TRL's tokenisation see identical
    token sequences. Special tokens ``<pad> <s> </s> <unk>`` take ids 0-3.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD, BOS, EOS, UNK]
    vocab = {token: i for i, token in enumerate(specials)}
    for i in range(vocab_size - len(specials)):
        vocab[f"w{i}"] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        model_max_length=model_max_length,
        padding_side="right",
        truncation_side="left",
    )


def words(rng: random.Random, n_tokens: int, n_words: int) -> str:
    """``n_tokens`` random words of the :func:`word_tokenizer` vocabulary (``n_words`` words)."""
    return " ".join(f"w{rng.randrange(n_words)}" for _ in range(n_tokens))


def synthetic_preferences(
    n_pairs: int,
    prompt_len: int,
    response_lens: tuple[int, int],
    *,
    vocab_size: int,
    seed: int = 0,
) -> list:
    """``n_pairs`` :class:`~oodpl.core.records.Preference` records of exact token lengths.

    The prompt has ``prompt_len`` tokens; each response (chosen and rejected independently) has
    a length drawn uniformly from ``response_lens = (low, high)`` inclusive (``low == high``:
    fixed). Both trainers append one eos token to every response.
    """
    from oodpl.core.records import Preference

    rng = random.Random(seed)
    n_words = vocab_size - 4
    low, high = response_lens
    records = []
    for _ in range(n_pairs):
        prompt = words(rng, prompt_len, n_words)
        chosen = words(rng, rng.randint(low, high), n_words)
        rejected = words(rng, rng.randint(low, high), n_words)
        while rejected == chosen:
            rejected = words(rng, rng.randint(low, high), n_words)
        records.append(Preference(prompt=prompt, chosen=chosen, rejected=rejected, domain="bench"))
    return records


def synthetic_completions(
    n: int, prompt_len: int, response_len: int, *, vocab_size: int, seed: int = 0
) -> list:
    """``n`` :class:`~oodpl.core.records.Completion` records of exact token lengths."""
    from oodpl.core.records import Completion

    rng = random.Random(seed)
    n_words = vocab_size - 4
    return [
        Completion(
            prompt=words(rng, prompt_len, n_words),
            response=words(rng, response_len, n_words),
            domain="bench",
        )
        for _ in range(n)
    ]


# --- hardware -------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def hardware_line(device: torch.device | str) -> str:
    """One line naming the device, CPU model and cores, torch threads and library versions."""
    device = torch.device(device)
    parts = []
    if device.type == "cuda":
        parts.append(f"GPU {torch.cuda.get_device_name(device)}")
    parts.append(f"CPU {_cpu_model()} ({os.cpu_count()} logical cores)")
    parts.append(f"torch threads {torch.get_num_threads()}")
    try:
        load = os.getloadavg()[0]
        parts.append(f"load avg {load:.1f}")
    except OSError:
        pass
    import transformers

    parts.append(f"torch {torch.__version__}, transformers {transformers.__version__}")
    return "; ".join(parts)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
