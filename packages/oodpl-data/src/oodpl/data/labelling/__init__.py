"""LLM labelling against any OpenAI-compatible endpoint (METHODS §3 "LLM labelling").

- :func:`judge_win_rate`: KAG-style win rate with position swapping ([MORE] App. D);
- :func:`generate_csg_pairs`: CSG preference pairs written as JSONL records;
- :class:`LabellingClient`: concurrency, retries with deterministic backoff, persistent cache,
  token budget / call limit, usage and cost accounting; :func:`dry_run` estimates for free;
- :class:`JudgeServer` / :func:`serve_in_thread`: an offline loopback endpoint that answers with
  the synthetic gold reward (tests and demos).

The API key comes from an environment variable only (``ClientConfig.api_key_env``).
"""

from .accounting import (
    CHARS_PER_TOKEN,
    ModelPrice,
    PriceTable,
    TokenBudget,
    UsageLedger,
    estimate_prompt_tokens,
    estimate_tokens,
)
from .cache import CachedReply, ResponseCache, cache_key
from .client import ChatRequest, ChatResult, LabellingClient, RunReport
from .dryrun import DryRunReport, dry_run
from .endpoint import Backoff, ClientConfig, EndpointRefusedError, resolve_api_key
from .gold_responder import GoldResponder
from .judge import (
    JudgeItem,
    WinRateReport,
    ajudge_win_rate,
    combine_verdicts,
    judge_requests,
    judge_win_rate,
)
from .pairs import (
    PairReport,
    ReviewItem,
    agenerate_csg_pairs,
    generate_csg_pairs,
    pair_requests,
    review_items_from_completions,
)
from .parsing import JudgeVerdict, PairReply, parse_judge_reply, parse_pair_reply
from .server import JudgeServer, fail_every, fail_first, fail_when, serve_in_thread
from .templates import PromptTemplates, packaged_template_dir

__all__ = [
    "CHARS_PER_TOKEN",
    "Backoff",
    "CachedReply",
    "ChatRequest",
    "ChatResult",
    "ClientConfig",
    "DryRunReport",
    "EndpointRefusedError",
    "GoldResponder",
    "JudgeItem",
    "JudgeServer",
    "JudgeVerdict",
    "LabellingClient",
    "ModelPrice",
    "PairReply",
    "PairReport",
    "PriceTable",
    "PromptTemplates",
    "ResponseCache",
    "ReviewItem",
    "RunReport",
    "TokenBudget",
    "UsageLedger",
    "WinRateReport",
    "agenerate_csg_pairs",
    "ajudge_win_rate",
    "cache_key",
    "combine_verdicts",
    "dry_run",
    "estimate_prompt_tokens",
    "estimate_tokens",
    "fail_every",
    "fail_first",
    "fail_when",
    "generate_csg_pairs",
    "judge_requests",
    "judge_win_rate",
    "packaged_template_dir",
    "pair_requests",
    "parse_judge_reply",
    "parse_pair_reply",
    "resolve_api_key",
    "review_items_from_completions",
    "serve_in_thread",
]
