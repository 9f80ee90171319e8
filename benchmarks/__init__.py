"""`make bench` (`python -m benchmarks`): the router measured side by side in
one run. Server-side: it hosts the router in process and drives it through
the client library, through their public interfaces only. Run from the
checkout; not installed (the name is too generic for site-packages).
"""
