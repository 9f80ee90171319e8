"""The fleet's memory: outcomes, recent answers, sessions and adapters in
one database, SQLite by default or a PostgreSQL every worker and replica
shares (`store.url`). db.py reaches the database, schema.py owns its
tables, writer.py keeps writes off the request path.
"""

from .db import NotAStore, Store, StoreUnavailable, as_url, dialect_of, redact

__all__ = ["NotAStore", "Store", "StoreUnavailable", "as_url", "dialect_of", "redact"]
