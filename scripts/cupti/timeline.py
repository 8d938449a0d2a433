"""GPU work of each call in a trace from trace.c: a call is the run of kernels, copies and sets
that ends with a kernel whose name contains PATTERN, back to the previous idle gap of more than
GAP_US microseconds (a sync) or a kernel longer than 5 ms (other work queued before it). Prints,
per call, its span (first start to last end) and busy time (the sum of the records), then the
records of the last call with the gaps between them.

    python3 timeline.py trace.csv PATTERN [GAP_US]
"""
import sys


def main():
    path, pattern = sys.argv[1], sys.argv[2]
    gap_ns = float(sys.argv[3] if len(sys.argv) > 3 else 150) * 1e3
    rows = []
    for line in open(path):
        kind, start, end, _, size, block, _, name = line.rstrip("\n").split(",", 7)
        if kind in "KCS":
            rows.append((kind, int(start), int(end), size, block, name))
    rows.sort(key=lambda r: r[1])
    calls = []
    for i, r in enumerate(rows):
        if pattern not in r[5]:
            continue
        j = i
        while j > 0 and rows[j][1] - rows[j - 1][2] < gap_ns and rows[j - 1][2] - rows[j - 1][1] < 5e6:
            j -= 1
        calls.append((j, i))
    for j, i in calls:
        span = (rows[i][2] - rows[j][1]) / 1e3
        busy = sum(r[2] - r[1] for r in rows[j : i + 1]) / 1e3
        print(f"call ending at record {i}: span {span:.0f} us, busy {busy:.0f} us, {i - j + 1} records")
    if calls:
        j, i = calls[-1]
        print("\nlast call: start us, gap us, duration us, kind, grid or bytes, block, name")
        prev = rows[j][1]
        for r in rows[j : i + 1]:
            print(f"{(r[1] - rows[j][1]) / 1e3:8.1f} {(r[1] - prev) / 1e3:6.1f} {(r[2] - r[1]) / 1e3:8.1f} {r[0]} {r[3]:>8} {r[4]:>4} {r[5][:80]}")
            prev = r[2]


if __name__ == "__main__":
    main()
