"""Engine-test fixtures: sana-tiny exported once (the session export shared with tests/export)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def export_root(tiny_export):
    out, _ = tiny_export
    return out
