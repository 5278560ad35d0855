"""``python -m amc.data NAME ROOT``: make sure a dataset's files are present (downloading with checksums)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from amc.data import build_data
from amc.errors import AmcError


def main(argv: list[str] | None = None) -> int:
    """Fetch (or find) the files of dataset NAME under ROOT and print where they are."""
    parser = argparse.ArgumentParser(prog="python -m amc.data", description=__doc__)
    parser.add_argument("name", help="dataset name, e.g. fashion_mnist, mnist, cifar10, cifar100")
    parser.add_argument("root", help="folder for the files")
    args = parser.parse_args(argv)
    try:
        data = build_data(args.name, root=args.root, download=True, search_size=0)  # files only: no split to fit
        data.setup()
    except AmcError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    where = Path(data.location)
    if where.resolve() == Path(args.root).expanduser().resolve():
        print(f"{data.name}: ready ({args.root})")
    else:  # found in a system folder (e.g. Debian's package): nothing was downloaded into root
        print(f"{data.name}: ready ({where}, found there: nothing was downloaded into {args.root})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
