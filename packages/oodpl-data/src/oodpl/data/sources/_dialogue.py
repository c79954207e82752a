"""Turning dialogues into ``(prompt, response)`` text, one convention for every source.

- A prompt that is a single user turn is that turn's text, verbatim.
- A longer history is rendered in the Anthropic HH-RLHF transcript style and ends with the cue
  for the next reply: ``"\\n\\nHuman: ...\\n\\nAssistant: ...\\n\\nHuman: ...\\n\\nAssistant:"``
  (``system`` turns render as ``"\\n\\nSystem: ..."``).
- A response is the text of the final assistant turn.

HH-RLHF and Nectar already ship text in the transcript style; their prompts are kept verbatim.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"

_ROLE_NAMES = {
    "user": "Human",
    "human": "Human",
    "prompter": "Human",
    "assistant": "Assistant",
    "gpt": "Assistant",
    "system": "System",
}


def role_name(role: str) -> str:
    """Transcript speaker for a message role (``user``/``prompter`` -> ``Human``, ...)."""
    try:
        return _ROLE_NAMES[role.lower()]
    except KeyError:
        raise ValueError(
            f"role: unknown message role {role!r}; expected one of {sorted(_ROLE_NAMES)}"
        ) from None


def render_prompt(turns: Sequence[tuple[str, str]]) -> str:
    """Render ``[(role, text), ...]`` ending with a user turn as a prompt (see module doc)."""
    if not turns:
        raise ValueError("turns: a prompt needs at least one turn")
    if role_name(turns[-1][0]) != "Human":
        raise ValueError(f"turns: a prompt must end with a user turn, got {turns[-1][0]!r}")
    if len(turns) == 1:
        return turns[0][1]
    parts = [f"\n\n{role_name(role)}: {text}" for role, text in turns]
    return "".join(parts) + ASSISTANT


def message_turns(messages: Any, *, what: str) -> list[tuple[str, str]]:
    """``[{"role": r, "content": c}, ...]`` -> ``[(r, c), ...]``; errors name ``what``."""
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)):
        raise TypeError(f"{what}: expected a list of messages, got {type(messages).__name__}")
    turns = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise TypeError(f"{what}[{i}]: expected a message object, got {type(message).__name__}")
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str):
            raise TypeError(f"{what}[{i}].role: expected a string, got {type(role).__name__}")
        if not isinstance(content, str):
            raise TypeError(f"{what}[{i}].content: expected a string, got {type(content).__name__}")
        role_name(role)
        turns.append((role, content))
    return turns


def split_conversation(
    chosen: Sequence[tuple[str, str]], rejected: Sequence[tuple[str, str]]
) -> tuple[str, str, str]:
    """Split two conversations that share a history into ``(prompt, chosen, rejected)``.

    The prompt is the longest common run of turns that ends with a user turn; each response is
    the text of the final assistant turn of its conversation, which must directly follow it.
    """
    common = 0
    for a, b in zip(chosen, rejected, strict=False):
        if a != b:
            break
        common += 1
    while common > 0 and role_name(chosen[common - 1][0]) != "Human":
        common -= 1
    if common == 0:
        raise ValueError("chosen: the two conversations share no user turn to use as the prompt")
    for what, conv in (("chosen", chosen), ("rejected", rejected)):
        if len(conv) != common + 1 or role_name(conv[-1][0]) != "Assistant":
            raise ValueError(
                f"{what}: expected exactly one assistant turn after the shared prompt "
                f"({common} shared turns, {len(conv)} in total)"
            )
    return render_prompt(chosen[:common]), chosen[-1][1], rejected[-1][1]


def split_shared_prefix(
    chosen: str, rejected: str, marker: str = ASSISTANT
) -> tuple[str, str, str]:
    """Split two transcripts at the last ``marker`` inside their common prefix (HH-RLHF style).

    ``prompt`` runs up to and including the last ``"\\n\\nAssistant:"`` both texts share, so
    ``prompt + chosen_response == chosen`` and ``prompt + rejected_response == rejected``.
    """
    limit = min(len(chosen), len(rejected))
    i = 0
    while i < limit and chosen[i] == rejected[i]:
        i += 1
    cut = chosen.rfind(marker, 0, i)
    if cut < 0 or cut + len(marker) > i:
        raise ValueError(f"chosen: the two texts share no {marker!r} prefix to split the prompt at")
    end = cut + len(marker)
    return chosen[:end], chosen[end:], rejected[end:]
