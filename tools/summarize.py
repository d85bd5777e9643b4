#!/usr/bin/env python3
"""One markdown table from run directories: router, validation loss and routing health of
layer 1 at the last epoch (summary.json; metrics.csv for the columns). Standard library only."""
import csv, json, os, sys

COLS = [("val_loss", "val loss"), ("moe1_active", "active"), ("val_moe1_active", "val active"), ("moe1_experts", "experts"),
        ("moe1_cv", "CV"), ("moe1_entropy_norm", "H(u)/logN"), ("moe1_mutual_info", "MI (nats)"),
        ("val_moe1_nmi", "NMI(label)"), ("moe1_load_balance", "Switch LB"), ("moe1_dropped", "dropped"), ("val_moe1_cv", "val CV")]

def main(dirs):
    print("| run | router | " + " | ".join(c[1] for c in COLS) + " |")
    print("|---|---|" + "---|" * len(COLS))
    for d in dirs:
        with open(os.path.join(d, "summary.json")) as f:
            s = json.load(f)
        with open(os.path.join(d, "metrics.csv")) as f:
            rows = list(csv.DictReader(f))
        last = rows[-1] if rows else {}
        cells = []
        for key, _ in COLS:
            v = last.get(key, "")
            try:
                x = float(v)
                cells.append(f"{x:.4g}" if not x.is_integer() else f"{int(x)}")
            except ValueError:
                cells.append(v)
        print(f"| {s.get('experiment')} | {s.get('router')} | " + " | ".join(cells) + " |")

if __name__ == "__main__":
    main(sys.argv[1:])
