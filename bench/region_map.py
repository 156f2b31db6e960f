"""Names and sorts the parallel regions that bench/region_time.c timed.

Usage: /usr/bin/python3 bench/region_map.py LIB.so REGIONS.txt STEPS [TOP]
    [--in-order]
Prints the milliseconds per step (total / STEPS) of each outlined function
of LIB.so and its number of calls: slowest first, or in the order the
regions first ran (--in-order); TOP of them (default 40).
"""
import argparse
import bisect
import os
import subprocess


def symbols(lib):
    """(sorted addresses, names) of the library's code symbols."""
    out = subprocess.run(["nm", lib], capture_output=True, text=True, check=True).stdout
    syms = sorted((int(p[0], 16), p[2]) for p in (l.split() for l in out.splitlines())
                  if len(p) == 3 and p[1] in "tT")
    return [a for a, _ in syms], [n for _, n in syms]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("lib")
    ap.add_argument("regions")
    ap.add_argument("steps", type=int)
    ap.add_argument("top", type=int, nargs="?", default=40)
    ap.add_argument("--in-order", action="store_true",
                    help="list the regions in the order they first ran")
    args = ap.parse_args()
    addrs, names = symbols(args.lib)
    rows = []
    for line in open(args.regions):
        path, offset, calls, seconds = line.split()
        if os.path.basename(path) != os.path.basename(args.lib):
            continue
        i = bisect.bisect_right(addrs, int(offset, 16)) - 1
        rows.append((float(seconds), int(calls), names[i] if i >= 0 else offset))
    total = sum(r[0] for r in rows)
    print("%.1f ms per step in %d regions" % (1e3 * total / args.steps, len(rows)))
    if not args.in_order:
        rows.sort(reverse=True)
    for seconds, calls, name in rows[: args.top]:
        print("%9.2f ms/step %7d calls  %s" % (1e3 * seconds / args.steps, calls, name))


if __name__ == "__main__":
    main()
