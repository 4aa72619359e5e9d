"""Report on sweeps: sweep.csv, report.md and plots from folders of simulate.py runs.

    python report.py outputs/simulate/2026-12-01_10-00-00          # into that sweep folder
    python report.py SWEEP_A SWEEP_B -o outputs/report              # several sweeps merged

Every multirun writes this report into its sweep folder already (a Hydra callback); use this
to redo it, or to merge sweeps. Incomplete runs are skipped with a note.
"""

import argparse
import sys

from lightning_modules import report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="sweep or run folders")
    parser.add_argument(
        "-o", "--out", help="where to write the report (default: the only DIR; needed for several)"
    )
    args = parser.parse_args(argv)
    try:
        written = report.write_report(args.dirs, out=args.out)
    except ValueError as e:
        sys.exit(f"error: {e}")
    skipped = written.collection.skipped
    for folder, why in skipped:
        print(f"skipped {folder}: {why}")
    print(
        f"{len(written.collection.jobs)} runs, {len(skipped)} skipped; "
        f"swept: {', '.join(written.swept) or '(nothing)'}"
    )
    for path in (written.csv, written.markdown, *written.plots):
        print(path)


if __name__ == "__main__":
    main()
