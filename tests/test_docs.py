"""Docs and comments are self-contained: no pointers to private notes or to a tracker users cannot see.

Model facts belong in docs/SANA.md; a tracker number becomes a description of the thing. Public upstream
threads are cited as ``owner/repo#N``.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCOPE = ("sana_deploy", "docs", "benchmarks", "cpp", "tests", "README.md")
# Spelled in pieces, so that this file does not itself carry the pointers it forbids.
_PRIVATE_NOTES = (
    "shared" + "/reference",
    "helper" + "_notes",
    "reference" + " §",
    "sana-model" + ".md",
    "peers" + ".md",
    "style" + ".md",
)
_TRACKER_NUMBER = r"\b" + "issue" + r"\s+#?\d+\b"
FORBIDDEN = re.compile("|".join([*map(re.escape, _PRIVATE_NOTES), _TRACKER_NUMBER]), re.IGNORECASE)


def _tracked_files() -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--", *SCOPE], cwd=ROOT, capture_output=True, check=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    this = Path(__file__).resolve()
    return [ROOT / p for p in out.split("\0") if p and (ROOT / p).resolve() != this]


def test_no_private_references() -> None:
    hits = []
    for path in _tracked_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue  # binary or deleted in the working tree
        for n, line in enumerate(text.splitlines(), 1):
            if FORBIDDEN.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not hits, "Pointers to private notes or tracker issues (use docs/SANA.md instead):\n" + "\n".join(hits)
