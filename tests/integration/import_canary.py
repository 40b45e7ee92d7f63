"""A module whose import leaves a marker file: a client must never import it for a server.

Named by the hostile coordinator as ``tests.integration.import_canary:Task``.
"""

from pathlib import Path

IMPORTED = "IMPORTED"
Path(IMPORTED).touch()


class Task:
    """Never reached: the import itself is the attack."""
