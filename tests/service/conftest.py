"""A real grpc.aio server on 127.0.0.1:0, running in a thread of its own
with its own event loop, around engines the test provides."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import classifier
from clients import TriageClient
from server.app import build_app


@contextlib.contextmanager
def serve_in_thread(config, engines, timeout: float = 10, clf=None):
    """Yield (client, app) for an app built from `config`, `engines` and a
    classifier (default: the committed one); stop it afterwards."""
    clf = clf or classifier.load()

    async def start():
        app = build_app(config, clf, engines=engines)  # grpc.aio binds to this loop
        await app.server.start()
        return app

    loop = asyncio.new_event_loop()
    app = loop.run_until_complete(start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    client = TriageClient(f"127.0.0.1:{app.port}", timeout=timeout)
    try:
        yield client, app
    finally:
        client.close()
        asyncio.run_coroutine_threadsafe(app.server.stop(0), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
