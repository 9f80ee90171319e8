"""The embedder's own tokenisation (the `tokenizers` library, not
transformers' wrapper) must give the model what transformers would: the
package's tokenizer.json pads and cuts every text at 128 tokens unless told
otherwise."""

from __future__ import annotations

import numpy as np
import pytest

from server.lookup.embedding import MAX_TOKENS, Embedder, model_path

TEXTS = [
    "What is the capital of France?",
    "  Ünïcödé   text\twith odd   spacing and CAPITALS ",
    "Is Pluto not a planet?",
    "word " * 400,  # past the model's window
]


@pytest.fixture(scope="module")
def embedder():
    return Embedder()


def test_token_ids_are_what_transformers_gives_the_model(embedder):
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(model_path(), local_files_only=True)
    for text in TEXTS:
        expected = reference(text, truncation=True, max_length=MAX_TOKENS)["input_ids"]
        assert embedder.tokenizer.encode(text).ids == expected
    assert embedder.count_tokens(TEXTS[0]) == 9  # no padding to 128
    assert embedder.count_tokens(TEXTS[-1]) == MAX_TOKENS  # cut at the model's window, not at 128


def test_a_padded_batch_embeds_like_one_text_at_a_time(embedder):
    batch = embedder.embed(TEXTS)
    alone = np.vstack([embedder.embed([t]) for t in TEXTS])
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    assert float((batch * alone).sum(1).min()) > 0.99999
    assert float(batch[0] @ batch[2]) < 0.9  # different questions are not collapsed into one vector
