"""Collate several ``sana-deploy bench --json`` result files into one markdown table (for docs/ and the README).

python benchmarks/collate.py benchmarks/results/*.json > docs/benchmark-table.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sana_deploy.bench.report import collate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path, help="result JSON files")
    parser.add_argument("--stages", default="step,loop,e2e", help="stage columns (default step,loop,e2e)")
    parser.add_argument("--out", type=Path, default=None, help="write here instead of stdout")
    args = parser.parse_args(argv)
    table = collate(args.files, tuple(s.strip() for s in args.stages.split(",") if s.strip()))
    if args.out:
        args.out.write_text(table)
    else:
        sys.stdout.write(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
