"""Kernel durations in a trace from trace.c, grouped by name and launch shape (cubes, units, shared memory): count, median and
minimum microseconds, and the total, the groups with the most total time first.

    python3 kernels.py trace.csv [NAME_SUBSTRING] [--order]

With --order, every matching kernel in time order instead: start (ms from the first), cubes,
microseconds.
"""
import statistics
import sys
from collections import defaultdict


def main():
    path = sys.argv[1]
    order = "--order" in sys.argv
    args = [a for a in sys.argv[2:] if a != "--order"]
    want = args[0] if args else ""
    groups = defaultdict(list)
    ordered = []
    for line in open(path):
        kind, start, end, _, size, block, smem, name = line.rstrip("\n").split(",", 7)
        if kind == "K" and want in name:
            groups[(name[:60], size, block, smem)].append((int(end) - int(start)) / 1e3)
            ordered.append((int(start), size, (int(end) - int(start)) / 1e3))
    if order:
        ordered.sort()
        for start, size, us in ordered:
            print(f"{(start - ordered[0][0]) / 1e6:10.3f} {size:>6} {us:10.1f}")
        return
    rows = sorted(groups.items(), key=lambda kv: -sum(kv[1]))
    print(f"{'count':>6} {'median us':>10} {'min us':>10} {'total ms':>9}  cubes units shared-bytes name")
    for (name, size, block, smem), ds in rows[:40]:
        print(f"{len(ds):6d} {statistics.median(ds):10.1f} {min(ds):10.1f} {sum(ds) / 1e3:9.2f}  {size} {block} {smem} {name}")


if __name__ == "__main__":
    main()
