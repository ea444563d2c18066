"""``chatgate ingest`` with the test embedder, for tests that run it as a separate process.

Usage: python tests/rag/ingest_script.py PATH... --collection NAME (settings from CHATGATE_* as usual).
CHATGATE_TEST_EMBED_DELAY: seconds the embedder sleeps per call (a slow ingestion to interrupt).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from chatgate.cli import _settings, parser
from chatgate.cli_rag import cmd_ingest
from tests.rag.doubles import HashEmbedder

if __name__ == "__main__":
    args = parser().parse_args(["ingest", *sys.argv[1:]])
    delay = float(os.environ.get("CHATGATE_TEST_EMBED_DELAY", "0"))
    sys.exit(cmd_ingest(args, _settings(args), embedder=HashEmbedder(delay=delay)))
