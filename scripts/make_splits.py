#!/usr/bin/env python
"""Regenerate the committed split files ``src/oncoseg/data/splits/<dataset>.json`` from the data.

Every registered dataset found under the data root (default: ``$ONCOSEG_DATA`` or ``../shared/data``) gets
its split by the rule in `oncoseg.data.splits`; aliases share their original's file. ``--check`` writes
nothing and exits with 1 if a committed file differs from what the data gives.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from oncoseg.data import REGISTRY, make_split, open_dataset
from oncoseg.data.splits import SPLIT_DIR, split_json
from oncoseg.errors import OncoSegError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="data root (default: $ONCOSEG_DATA or ../shared/data)")
    parser.add_argument("--out", type=Path, default=SPLIT_DIR, help=f"output folder (default: {SPLIT_DIR})")
    parser.add_argument("--check", action="store_true", help="compare with the files in --out, write nothing")
    args = parser.parse_args(argv)

    differ = False
    for info in REGISTRY.values():
        if info.alias_of:
            continue
        try:
            dataset = open_dataset(info.name, args.root)
        except OncoSegError as exc:
            print(f"skipped {str(exc).split(';')[0]}")
            continue
        text = split_json(make_split(dataset))
        path = args.out / f"{info.name}.json"
        if args.check:
            same = path.is_file() and path.read_text(encoding="utf-8") == text
            differ |= not same
            print(f"{'same' if same else 'DIFFERS'}: {path}")
        else:
            args.out.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
