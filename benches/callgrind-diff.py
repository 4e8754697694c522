#!/usr/bin/env python3
"""Per-function instructions per transaction between two callgrind dumps.

    callgrind-diff.py first.out second.out transactions [top]

Prints a markdown table of (second - first) / transactions for each
function, self cost and inclusive cost, largest self cost first. The
callgrind format is read directly (name compression, call costs), so
nothing depends on the installed callgrind_annotate's version.
"""
import re
import sys


def costs(path):
    names = {}
    self_cost, incl_cost = {}, {}
    fn = None
    after_calls = False
    callee = None
    name_re = re.compile(r"\((\d+)\)(?:\s+(.*))?")

    def name(v):
        m = name_re.match(v)
        if not m:
            return v
        if m.group(2) is not None:
            names[m.group(1)] = m.group(2)
        return names.get(m.group(1), v)

    with open(path) as f:
        for line in f:
            if not line or line[0] == "\n":
                continue
            c = line[0]
            if c.isdigit() or c in "+-*":
                parts = line.split()
                if len(parts) < 2:
                    continue
                v = int(parts[1])
                if after_calls:
                    if callee != fn:
                        incl_cost[fn] = incl_cost.get(fn, 0) + v
                    after_calls = False
                else:
                    self_cost[fn] = self_cost.get(fn, 0) + v
                    incl_cost[fn] = incl_cost.get(fn, 0) + v
                continue
            if line.startswith("fn="):
                fn = name(line[3:].strip())
            elif line.startswith("cfn="):
                callee = name(line[4:].strip())
            elif line.startswith("calls="):
                after_calls = True
    return self_cost, incl_cost


def main():
    f1, f2, txns = sys.argv[1], sys.argv[2], int(sys.argv[3])
    top = int(sys.argv[4]) if len(sys.argv) > 4 else 25
    s1, i1 = costs(f1)
    s2, i2 = costs(f2)
    rows = sorted(((s2[k] - s1.get(k, 0)) / txns, k) for k in s2)
    rows.reverse()
    print("| self Ir / txn | inclusive Ir / txn | function |")
    print("|---:|---:|---|")
    for v, k in rows[:top]:
        if v < 1:
            break
        inc = (i2.get(k, 0) - i1.get(k, 0)) / txns
        short = k if len(k) < 110 else k[:107] + "..."
        print(f"| {v:,.0f} | {inc:,.0f} | `{short}` |")


if __name__ == "__main__":
    main()
