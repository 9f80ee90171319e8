"""A real grpc.aio server on 127.0.0.1:0, running in a thread of its own
with its own event loop, around engines the test provides."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import classifier
from clients import TriageClient
from server.app import build_app


class StubEngine:
    """What the Engine protocol (server/tiers/engine.py) asks beyond render
    and generate, for the fakes these tests serve: loaded, ready, nothing
    to start or stop, nothing unfinished."""

    restartable = False

    def __init__(self, tier: str, model: str, max_model_len: int):
        self.tier, self.model, self.max_model_len = tier, model, max_model_len
        self.load_seconds, self.ready = 0.0, True

    def unfinished_requests(self):
        return 0

    async def start(self):
        pass

    async def shutdown(self):
        pass


@contextlib.contextmanager
def serve_in_thread(config, engines, timeout: float = 10, clf=None, pressure: bool = False):
    """Yield (client, app) for an app built from `config`, `engines` and a
    classifier (default: the committed one); stop it afterwards.
    `pressure`: start the router's LoopPressure, as App.start_engines does.
    `serving_loop(app)` is the loop the app serves on."""
    clf = clf or classifier.load()

    async def start():
        app = build_app(config, clf, engines=engines)  # grpc.aio binds to this loop
        await app.server.start()
        if pressure:
            app.router.pressure.start()
        _LOOPS[id(app)] = asyncio.get_running_loop()
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
        _LOOPS.pop(id(app), None)


_LOOPS: dict[int, asyncio.AbstractEventLoop] = {}


def serving_loop(app) -> asyncio.AbstractEventLoop:
    """The event loop an app from serve_in_thread serves on (to run work there)."""
    return _LOOPS[id(app)]
