"""A tier's stream_interval (request.StreamInterval): the first text at
once, then messages of at least that many tokens, nothing lost."""

from pathlib import Path

import pytest

from server.config import ConfigError, load
from server.tiers.engine import to_vllm_sampling
from server.request import StreamInterval
from server.types import EffectiveSampling, EngineChunk

ROOT = Path(__file__).resolve().parents[2]


def _send(interval: int, tokens_per_chunk: list[int]) -> list[tuple[str, int]]:
    """(text sent, completion tokens then) for every message, the held rest last."""
    held, sent, total = StreamInterval(interval), [], 0
    for i, k in enumerate(tokens_per_chunk):
        total += k
        chunk = EngineChunk(delta="t" * k, completion_tokens=total, finished=i == len(tokens_per_chunk) - 1,
                            finish_reason="stop" if i == len(tokens_per_chunk) - 1 else None)
        if (text := held.add(chunk)) is not None:
            sent.append((text, total))
    if rest := held.rest():
        sent.append((rest, total))
    return sent


def test_one_token_a_chunk_goes_out_in_fours_after_the_first():
    sent = _send(4, [1] * 10)
    assert [len(text) for text, _ in sent] == [1, 4, 4, 1]  # the first at once; the last with the finish
    assert [at for _, at in sent] == [1, 5, 9, 10]


def test_chunks_that_already_carry_the_interval_pass_as_they_are():
    assert [len(text) for text, _ in _send(4, [1, 4, 4, 3])] == [1, 4, 4, 3]


def test_interval_one_sends_every_chunk():
    assert [len(text) for text, _ in _send(1, [1, 1, 2, 1])] == [1, 1, 2, 1]


@pytest.mark.parametrize("chunks", [[1] * 7, [2, 1, 3, 1, 1], [5], [1, 1]])
def test_no_text_is_lost_or_reordered(chunks):
    assert "".join(text for text, _ in _send(3, chunks)) == "t" * sum(chunks)


def test_the_in_process_engine_is_asked_for_the_same_interval():
    sampling = EffectiveSampling(temperature=0.0, top_p=1.0, top_k=0, max_tokens=8, stop=(), seed=None, repetition_penalty=1.0)
    assert to_vllm_sampling(sampling, 4).stream_interval == 4
    assert to_vllm_sampling(sampling).stream_interval == 1


@pytest.mark.parametrize("value", [0, -2, 1.5, "four"])
def test_stream_interval_is_a_positive_integer(value):
    with pytest.raises(ConfigError, match="tiers.small.stream_interval must be an integer >= 1"):
        load(ROOT / "config/cpu.yaml", [f"tiers.small.stream_interval={value}"])
