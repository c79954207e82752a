"""The synthetic multi-domain benchmark with an exact gold reward (SYNTHETIC.md).

>>> from oodpl.data.synthetic import SyntheticConfig, generate_benchmark
>>> bench = generate_benchmark(SyntheticConfig(n_finetune=2, n_pref_train=2,
...                                            n_eval_reference=1, n_eval_pref=1))
>>> pair = bench.pref_train["books"][0]
>>> bench.gold(pair.prompt, pair.chosen) == pair.meta["gold_chosen"]
True
"""

from .config import DEFAULT_DOMAINS, DEFAULT_LENGTH_PREFERENCE, SyntheticConfig
from .generator import SOURCE, SPLITS, SyntheticBenchmark, generate_benchmark, sample_response
from .gold import GoldReward, RewardBreakdown, words
from .lexicon import BUILTIN_LEXICONS, SHARED_SENTIMENT, DomainLexicon, lexicon_for
from .loader import SPLIT_ALIASES, load_synthetic

__all__ = [
    "BUILTIN_LEXICONS",
    "DEFAULT_DOMAINS",
    "DEFAULT_LENGTH_PREFERENCE",
    "SHARED_SENTIMENT",
    "SOURCE",
    "SPLITS",
    "SPLIT_ALIASES",
    "DomainLexicon",
    "GoldReward",
    "RewardBreakdown",
    "SyntheticBenchmark",
    "SyntheticConfig",
    "generate_benchmark",
    "lexicon_for",
    "load_synthetic",
    "sample_response",
    "words",
]
