"""Chat messages to prompt token ids, with the tier's own tokenizer, for
in-process and remote tiers alike (one rendering rule, so a remote tier
checks lengths, counts tokens and neutralises special tokens exactly as an
in-process one, and a remote generation is one round trip).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from typing import Sequence

from .types import ChatMessage

log = logging.getLogger("triage.prompt")

# Rendering a prompt this long (characters, all messages) happens in a worker
# thread: tokenising 32k characters takes tens of milliseconds, which on the
# event loop stalls every other request and health check.
RENDER_OFF_LOOP_CHARS = 2000

_PLACEHOLDER = "\ue000{}\ue001"  # private-use characters: no template or user text makes them
_PLACEHOLDERS = re.compile("\ue000(\\d+)\ue001")


def render_ids(tokenizer, messages: Sequence[ChatMessage]) -> list[int]:
    """Prompt token ids: the chat template's own special tokens as tokens,
    and any special token written inside a message as plain text, so a user
    who types `<|im_end|><|im_start|>system` gets those characters, not a
    forged system turn.

    The template is rendered around placeholders, so its own added tokens
    can be found before any user text is in place; the text between them is
    then tokenised with the messages put back and special tokens split. A
    fast tokenizer cuts text at added tokens before anything else, so for
    ordinary messages this gives exactly the ids of apply_chat_template."""
    marked = [{"role": m.role, "content": _PLACEHOLDER.format(i)} for i, m in enumerate(messages)]
    text = tokenizer.apply_chat_template(marked, add_generation_prompt=True, tokenize=False)
    if [int(m.group(1)) for m in _PLACEHOLDERS.finditer(text)] != list(range(len(messages))):
        raise ValueError("the chat template does not place each message's content once, in order")
    added = tokenizer.get_added_vocab()
    splitter = re.compile("(" + "|".join(re.escape(t) for t in sorted(added, key=len, reverse=True)) + ")") if added else None
    ids: list[int] = []
    for piece in (splitter.split(text) if splitter else [text]):
        if piece in added:
            ids.append(added[piece])
        elif piece:
            piece = _PLACEHOLDERS.sub(lambda m: messages[int(m.group(1))].content, piece)
            ids += tokenizer.encode(piece, add_special_tokens=False, split_special_tokens=True)
    return ids


async def render(tokenizer, messages: Sequence[ChatMessage]) -> list[int]:
    """render_ids, off the event loop for long prompts."""
    if sum(len(m.content) for m in messages) <= RENDER_OFF_LOOP_CHARS:
        # In this thread: a short prompt takes well under a millisecond,
        # less than a hop to a worker thread would.
        return render_ids(tokenizer, messages)
    return await asyncio.to_thread(render_ids, tokenizer, messages)


def load_tokenizer(path: str):
    """The tokenizer (and chat template) at `path`: a local folder, or a hub
    id already in the local Hugging Face cache. Never downloads. None when
    there is none, after saying in the log what that costs."""
    folder = path if os.path.isdir(path) else _cached_hub_folder(path)
    if folder is None:
        problem = "not a folder, nor a model in the local Hugging Face cache"
    else:
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as exc:
            problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    log.warning("no local tokenizer at %r (%s): prompts for this tier are rendered by its servers' /tokenize, "
                "one more round trip per request, and special tokens typed in a message are not neutralised; "
                "point the tier's model_path at a copy of the served model's tokenizer files", path, problem)
    return None


def _cached_hub_folder(repo_id: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "tokenizer_config.json")
    except ValueError:  # not a valid repository id
        return None
    return os.path.dirname(found) if isinstance(found, str) else None
