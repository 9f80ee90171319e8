"""Document retrieval: `python -m server index DOCS --out INDEX` builds a
faiss index of text/markdown chunks; the router retrieves the top-k for a
question and puts them in the prompt as numbered sources.

Index folder layout (all written by `build_index`):
    index.faiss     faiss IndexFlatIP over unit vectors (cosine similarity)
    chunks.jsonl    one {"document", "chunk", "text"} per vector, in order
    manifest.json   embedding model, dimension, chunking, counts, sha256 of chunks.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .faiss_threads import single_threaded_faiss

DOC_SUFFIXES = {".txt", ".md", ".markdown", ".rst"}
FORMAT_VERSION = 1


class IndexError_(RuntimeError):
    """The index folder is missing, incomplete or corrupt; the message says which."""


@dataclass(frozen=True)
class Chunk:
    document: str
    chunk: int
    text: str


@dataclass(frozen=True)
class Hit:
    chunk: Chunk
    score: float


def chunk_text(text: str, size: int, overlap: int) -> list[str]:
    """Pieces of about `size` characters, `overlap` shared between neighbours,
    cut at whitespace where possible so words stay whole."""
    text = text.strip()
    if not text:
        return []
    pieces, start = [], 0
    while start < len(text):
        end = min(len(text), start + size)
        if end < len(text):
            cut = text.rfind(" ", start + size // 2, end)
            end = cut if cut > start else end
        pieces.append(text[start:end].strip())
        if end >= len(text):
            break
        start = max(end - overlap, start + 1)
    return [p for p in pieces if p]


def build_index(docs_dir: str | Path, out_dir: str | Path, embedder, chunk_chars: int = 800, overlap: int = 100, progress: bool = True) -> dict:
    import faiss
    from tqdm import tqdm

    docs_dir, out_dir = Path(docs_dir), Path(out_dir)
    if not docs_dir.is_dir():
        raise IndexError_(f"{docs_dir} is not a folder")
    if not 0 <= overlap < chunk_chars:
        raise ValueError("overlap must be at least 0 and below the chunk size")
    files = sorted(p for p in docs_dir.rglob("*") if p.is_file() and p.suffix.lower() in DOC_SUFFIXES)
    if not files:
        raise IndexError_(f"no {', '.join(sorted(DOC_SUFFIXES))} files under {docs_dir}")
    chunks: list[Chunk] = []
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        rel = str(path.relative_to(docs_dir))
        chunks += [Chunk(rel, i, piece) for i, piece in enumerate(chunk_text(text, chunk_chars, overlap))]
    index = faiss.IndexFlatIP(embedder.dim)
    started = time.monotonic()
    batch = 64
    with tqdm(total=len(chunks), desc="embedding chunks", unit="chunk", disable=not progress) as bar:
        for start in range(0, len(chunks), batch):
            part = chunks[start : start + batch]
            index.add(embedder.embed([c.text for c in part]))
            bar.update(len(part))
    out_dir.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(out_dir / "index.faiss"))
    lines = "".join(json.dumps({"document": c.document, "chunk": c.chunk, "text": c.text}, ensure_ascii=False) + "\n" for c in chunks)
    (out_dir / "chunks.jsonl").write_text(lines, encoding="utf-8")
    manifest = {
        "format": FORMAT_VERSION, "embedding_model": embedder.name, "dim": embedder.dim, "chunks": len(chunks),
        "documents": len(files), "chunk_chars": chunk_chars, "overlap": overlap,
        "chunks_sha256": hashlib.sha256(lines.encode()).hexdigest(), "seconds": round(time.monotonic() - started, 2),
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


class Retriever:
    """A loaded index. Loading checks everything, so a bad index fails at
    start-up, not at the first request."""

    def __init__(self, folder: str | Path, embedder):
        import faiss

        folder = Path(folder)
        try:
            manifest = json.loads((folder / "manifest.json").read_text())
            lines = (folder / "chunks.jsonl").read_text(encoding="utf-8")
            index = faiss.read_index(str(folder / "index.faiss"))
        except FileNotFoundError as exc:
            raise IndexError_(f"retrieval index {folder} is incomplete: {Path(exc.filename).name} is missing (build it with `python -m server index DOCS --out INDEX`)") from None
        except (ValueError, RuntimeError) as exc:
            raise IndexError_(f"retrieval index {folder} is corrupt: {str(exc).splitlines()[0][:200]}") from None
        problems = []
        if manifest.get("format") != FORMAT_VERSION:
            problems.append(f"format {manifest.get('format')} (expected {FORMAT_VERSION})")
        if manifest.get("embedding_model") != embedder.name or manifest.get("dim") != embedder.dim or index.d != embedder.dim:
            problems.append(f"built with {manifest.get('embedding_model')}/{manifest.get('dim')}, serving {embedder.name}/{embedder.dim}")
        if hashlib.sha256(lines.encode()).hexdigest() != manifest.get("chunks_sha256"):
            problems.append("chunks.jsonl does not match its checksum")
        chunks = [Chunk(**json.loads(line)) for line in lines.splitlines() if line.strip()] if not problems else []
        if not problems and not (len(chunks) == index.ntotal == manifest.get("chunks")):
            problems.append(f"{len(chunks)} chunks, {index.ntotal} vectors, manifest says {manifest.get('chunks')}")
        if problems:
            raise IndexError_(f"retrieval index {folder} is unusable: {'; '.join(problems)}")
        self.folder, self.manifest, self._index, self._chunks = folder, manifest, index, chunks

    def __len__(self) -> int:
        return len(self._chunks)

    def search(self, vector: np.ndarray, k: int) -> list[Hit]:
        single_threaded_faiss()
        scores, rows = self._index.search(vector.reshape(1, -1).astype(np.float32), min(k, len(self._chunks)))
        return [Hit(self._chunks[int(r)], float(s)) for s, r in zip(scores[0], rows[0]) if r >= 0]


def sources_message(hits: list[Hit], max_chars: int) -> str:
    """The system text that carries the retrieved chunks, numbered."""
    parts = ["Answer the question using the numbered sources below. Cite them as [1], [2], ... "
             "If they do not contain the answer, say so.", ""]
    for i, hit in enumerate(hits, start=1):
        text = hit.chunk.text[:max_chars]
        parts.append(f"[{i}] {hit.chunk.document} (chunk {hit.chunk.chunk})\n{text}\n")
    return "\n".join(parts)


def with_sources(messages, hits: list[Hit], max_chars: int):
    """The conversation with the sources as a system message in front (merged
    into an existing leading system message)."""
    from ..types import ChatMessage

    text = sources_message(hits, max_chars)
    if messages and messages[0].role == "system":
        return (ChatMessage("system", messages[0].content + "\n\n" + text), *messages[1:])
    return (ChatMessage("system", text), *messages)


def wants_retrieval(service: "RetrievalService | None", asked: bool | None, tier: str) -> bool:
    """The request's own choice, else the tiers retrieval is on for by
    default; FAILED_PRECONDITION when asked of a server with no index."""
    from ..errors import FailedPrecondition

    wanted = asked if asked is not None else (service is not None and tier in service.default_tiers)
    if wanted and service is None:
        raise FailedPrecondition("retrieval: this server has no document index configured (retrieval.index)")
    return bool(wanted)


class RetrievalService:
    """What the router needs: embed the question, search, time it."""

    def __init__(self, retriever: Retriever, embedder, top_k: int, max_chunk_chars: int, default_tiers: tuple[str, ...]):
        self._retriever, self._embedder = retriever, embedder
        self.top_k, self.max_chunk_chars, self.default_tiers = top_k, max_chunk_chars, default_tiers

    def __len__(self) -> int:
        return len(self._retriever)

    async def retrieve(self, question: str, top_k: int | None = None) -> tuple[list[Hit], float]:
        import asyncio

        started = time.perf_counter()
        hits = await asyncio.to_thread(self._embed_and_search, question, top_k or self.top_k)  # both off the event loop
        return hits, (time.perf_counter() - started) * 1e3

    def _embed_and_search(self, question: str, k: int) -> list[Hit]:
        return self._retriever.search(self._embedder.embed([question])[0], k)


def main(argv: list[str] | None = None) -> int:
    """Build an index on the machine that serves it (it needs the embedding
    model `make models` exports, not a running server)."""
    import sys

    from .embedding import Embedder

    parser = argparse.ArgumentParser(prog="python -m server index", description="chunk and embed a folder of text/markdown files into a retrieval index")
    parser.add_argument("docs", help="folder of .txt/.md/.rst files (searched recursively)")
    parser.add_argument("--out", required=True, help="index folder to write (point retrieval.index at it)")
    parser.add_argument("--chunk-chars", type=int, default=800)
    parser.add_argument("--overlap", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        manifest = build_index(args.docs, args.out, Embedder(threads=args.threads), args.chunk_chars, args.overlap)
    except (IndexError_, ValueError) as exc:
        print(f"triage: {exc}", file=sys.stderr)
        return 1
    print(f"indexed {manifest['chunks']} chunks from {manifest['documents']} documents into {args.out} in {manifest['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
