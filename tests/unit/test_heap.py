"""The router's heap after an engine restart: what the restart freed goes
back to the system (stalls.freeze_heap, called once an engine is up)."""

import subprocess
import sys
import textwrap

# Blocks above pymalloc's size go to glibc; made in a worker thread, as an
# engine's load is (its own arena), with a survivor every 50 blocks so the
# arena cannot shrink from its top by itself.
_SCRIPT = textwrap.dedent("""
    import threading, psutil
    from server.observe.stalls import freeze_heap, thaw_heap
    keep = []
    def load():
        blocks = [bytes(4000) + bytes([i % 256]) for i in range(50000)]
        keep.extend(blocks[::50])
    t = threading.Thread(target=load); t.start(); t.join()
    before = psutil.Process().memory_info().rss
    freeze_heap()
    after = psutil.Process().memory_info().rss
    thaw_heap()
    print(before - after)
""")


def test_freezing_the_heap_returns_freed_memory_to_the_system():
    out = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, check=True)
    released_mb = int(out.stdout) / 2**20
    # About 190 MB were freed; without the trim none of it leaves the RSS.
    assert released_mb > 100, released_mb
