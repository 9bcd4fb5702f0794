"""Add the records a GPU run sent back (results.tgz from run_sweep.sh) to the results store.

    python bench/lent_gpu/collect.py /path/to/results.tgz [--replace]

New records are added; a record the store already holds with the same content is skipped; one
that differs is reported and left alone unless --replace is given, so nothing is silently lost.
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from llmq_core.results import ResultStore  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("archive", type=Path)
    parser.add_argument("--replace", action="store_true", help="replace stored records that differ")
    args = parser.parse_args(argv)
    store, added, same, conflicts = ResultStore(), 0, 0, []
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(args.archive) as archive:
        archive.extractall(tmp, filter="data")
        for path in sorted((Path(tmp) / "results").rglob("*.json")):
            record = json.loads(path.read_text())
            stored = store.get(record["key"])
            if stored == record:
                same += 1
            elif stored is None or args.replace:
                store.write(record, replace=args.replace)
                added += 1
            else:
                conflicts.append(path.name)
    print(f"{added} records added, {same} already stored" + (f", {len(conflicts)} differ and were kept as they "
          f"are (--replace to take the new ones): {', '.join(conflicts)}" if conflicts else ""))
    return 1 if conflicts else 0


if __name__ == "__main__":
    sys.exit(main())
