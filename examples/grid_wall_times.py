"""The measured span of a grid run, from every finished step's _SUCCESS.json (the publish scripts append it to
wall_times.md): how many steps, first start, last end, and the steps' own wall times added up.

    python examples/grid_wall_times.py RESULTS_DIR
"""
import datetime
import glob
import json
import os
import sys


def main(results_dir: str) -> None:
    found = glob.glob(os.path.join(results_dir, "**", "_SUCCESS.json"), recursive=True)
    marks = [json.load(open(p)) for p in sorted({os.path.realpath(p) for p in found})]  # language links: once
    start = min(datetime.datetime.fromisoformat(m["started"]) for m in marks)
    end = max(datetime.datetime.fromisoformat(m["finished"]) for m in marks)
    busy = sum(m["wall_seconds"] for m in marks)
    print(f"\n{len(marks)} steps finished; first started {start:%H:%M:%S}, last finished {end:%H:%M:%S} UTC: "
          f"{(end - start).total_seconds() / 60:.1f} min of wall time; the steps' own wall times add up to "
          f"{busy / 60:.1f} min.")


if __name__ == "__main__":
    main(sys.argv[1])
