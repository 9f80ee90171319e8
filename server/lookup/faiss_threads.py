"""faiss's OpenMP threads, set where they take effect: in the searching thread."""

from __future__ import annotations


def single_threaded_faiss() -> None:
    """Search one query on one OpenMP thread. OpenMP keeps this setting per
    calling thread (threads started later get the default, one per core), so
    it is called before every search, in whichever worker thread runs it.
    Without it, a search run from an asyncio worker thread in the router took
    p50 ~30 ms instead of ~1.5 ms for 100,000 entries: waking faiss's second
    thread on these VMs, with the engines on the other core, costs far more
    than the search (`python -m benchmarks --only caches`, in-router
    lookup)."""
    import faiss

    faiss.omp_set_num_threads(1)
