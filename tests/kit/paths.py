"""Where things are, so that no test computes paths relative to its own file."""

from __future__ import annotations

from pathlib import Path

KIT = Path(__file__).resolve().parent
TESTS = KIT.parent
ROOT = TESTS.parent
DOCS = ROOT / "docs"
DEPLOY = DOCS / "deploy"
VECTORS = TESTS / "vectors"
