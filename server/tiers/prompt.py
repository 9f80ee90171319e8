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
import threading
import weakref
from typing import Sequence

from ..types import ChatMessage

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
    ordinary messages this gives exactly the ids of apply_chat_template.

    With placeholders for contents, the rendering depends only on the
    roles, so it is worked out once per sequence of roles (`_layout`): per
    request only the pieces holding a message are tokenised."""
    ids: list[int] = []
    for part in _layout(tokenizer, tuple(m.role for m in messages)):
        if isinstance(part, str):
            part = _PLACEHOLDERS.sub(lambda m: messages[int(m.group(1))].content, part)
            ids += tokenizer.encode(part, add_special_tokens=False, split_special_tokens=True)
        else:
            ids += part
    return ids


# Per tokenizer, per sequence of roles: the template's text cut at its added
# tokens, each piece either ids (an added token, or text with no message in
# it) or text with placeholders, tokenised per request. Bounded: a new shape
# past the bound evicts the oldest.
_LAYOUTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_LAYOUTS_PER_TOKENIZER = 256
_LAYOUTS_LOCK = threading.Lock()  # long prompts render in worker threads


_NOT_SEEN = object()


def _layout(tokenizer, roles: tuple[str, ...]) -> list:
    try:
        cached = _LAYOUTS.get(tokenizer, _NOT_SEEN)
    except TypeError:  # a tokenizer that cannot be weakly referenced: worked out every time
        cached = None
    if cached is _NOT_SEEN:
        # A template that reads the clock or draws at random renders
        # differently from call to call: never reuse its rendering (None).
        source = str(getattr(tokenizer, "chat_template", "") or "")
        cached = None if ("strftime_now" in source or "random" in source) else {}
        with _LAYOUTS_LOCK:
            _LAYOUTS[tokenizer] = cached
    if cached is None:
        return _work_out_layout(tokenizer, roles)
    layout = cached.get(roles)
    if layout is None:
        layout = _work_out_layout(tokenizer, roles)
        with _LAYOUTS_LOCK:
            if len(cached) >= _LAYOUTS_PER_TOKENIZER:
                cached.pop(next(iter(cached)), None)
            cached[roles] = layout
    return layout


def _work_out_layout(tokenizer, roles: tuple[str, ...]) -> list:
    marked = [{"role": role, "content": _PLACEHOLDER.format(i)} for i, role in enumerate(roles)]
    text = tokenizer.apply_chat_template(marked, add_generation_prompt=True, tokenize=False)
    if [int(m.group(1)) for m in _PLACEHOLDERS.finditer(text)] != list(range(len(roles))):
        raise ValueError("the chat template does not place each message's content once, in order")
    added = tokenizer.get_added_vocab()
    splitter = re.compile("(" + "|".join(re.escape(t) for t in sorted(added, key=len, reverse=True)) + ")") if added else None
    layout: list = []
    for piece in (splitter.split(text) if splitter else [text]):
        if piece in added:
            layout.append([added[piece]])
        elif _PLACEHOLDERS.search(piece):
            layout.append(piece)
        elif piece:
            layout.append(tokenizer.encode(piece, add_special_tokens=False, split_special_tokens=True))
    return layout


async def render(tokenizer, messages: Sequence[ChatMessage]) -> list[int]:
    """render_ids, off the event loop for long prompts."""
    if sum(len(m.content) for m in messages) <= RENDER_OFF_LOOP_CHARS:
        # In this thread: a short prompt takes well under a millisecond,
        # less than a hop to a worker thread would.
        return render_ids(tokenizer, messages)
    return await asyncio.to_thread(render_ids, tokenizer, messages)


class TemplateTokenizer:
    """A served model's tokenizer.json and chat template, read with the
    `tokenizers` library and jinja2 alone: what render_ids needs, without
    importing transformers (which imports torch: ~300 MB and seconds of
    start-up for a router whose tiers are all remote). The template is
    rendered as transformers renders it (sandboxed, trim_blocks and
    lstrip_blocks, its helper functions, the special tokens as variables);
    tests/unit/test_render.py checks the ids match transformers'."""

    def __init__(self, folder: str):
        import json
        from pathlib import Path

        from tokenizers import Tokenizer

        root = Path(folder)
        config = json.loads((root / "tokenizer_config.json").read_text()) if (root / "tokenizer_config.json").is_file() else {}
        template = (root / "chat_template.jinja").read_text() if (root / "chat_template.jinja").is_file() else config.get("chat_template")
        if isinstance(template, list):  # named templates: the default one
            template = {t.get("name"): t.get("template") for t in template}.get("default")
        if not template:
            raise ValueError(f"{folder} has no chat template")
        self.chat_template = template  # as transformers' tokenizers expose it
        self._template = _compile_template(template)
        self._specials = {k: (v.get("content") if isinstance(v, dict) else v) for k, v in config.items()
                          if k.endswith("_token") and isinstance(v, (str, dict))}
        self._tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
        self._tokenizer.encode_special_tokens = True  # special tokens in text are text; render_ids places the template's own
        self._added = {t.content: i for i, t in self._tokenizer.get_added_tokens_decoder().items()}

    def apply_chat_template(self, messages, add_generation_prompt: bool = True, tokenize: bool = False) -> str:
        assert not tokenize, "render_ids tokenises the pieces itself"
        return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt, **self._specials)

    def get_added_vocab(self) -> dict[str, int]:
        return self._added

    def encode(self, text: str, add_special_tokens: bool = False, split_special_tokens: bool = True) -> list[int]:
        assert not add_special_tokens and split_special_tokens
        return self._tokenizer.encode(text, add_special_tokens=False).ids


def _compile_template(source: str):
    import json
    from datetime import datetime

    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = lambda x, ensure_ascii=False, indent=None, separators=None, sort_keys=False: json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


def load_tokenizer(path: str):
    """The tokenizer (and chat template) at `path`: a local folder, or a hub
    id already in the local Hugging Face cache. Never downloads. A folder
    with a tokenizer.json is read without transformers (TemplateTokenizer);
    others through transformers. None when there is none, after saying in
    the log what that costs."""
    folder = path if os.path.isdir(path) else _cached_hub_folder(path)
    if folder is None:
        problem = "not a folder, nor a model in the local Hugging Face cache"
    else:
        try:
            if os.path.isfile(os.path.join(folder, "tokenizer.json")):
                return TemplateTokenizer(folder)
            from transformers import AutoTokenizer

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
