#!/usr/bin/env python3
"""The COD collapse-risk study's tables (docs/RESULTS.md, "The router-anti-collapse seed's
system"), from the runs of one or more sweeps:

    python3 tools/cod-study-report.py results/cod-*/sweeps/*/

For every recipe (the run's `experiment`), at the last epoch of each finished run:
  - collapse rate by moelab's signals: runs with any layer flagged (`collapsed_layers` > 0,
    docs/metrics.md), and per layer; also runs flagged at any epoch after the warm-up;
  - collapse rate by the seed's rule: the weighted load-balance term `seed_lb_weighted`
    below 1e-4 ("collapsed") or above 0.01 ("unstable") at the last epoch (scripts/cod.lua
    logs it for every recipe; n/a when the recipe has no load-balance loss);
  - rates with the Wilson 95% interval;
  - the mean of val_iou for the runs moelab flags and for the others, beside the dense
    baseline's (mean and 95% t interval);
  - the habitat x expert-kind table: the validation dispatch share of each kind per habitat
    and layer (routing_labels.csv, last epoch), averaged over the recipe's runs (expert e has
    kind model.expert_kinds[e], so kinds are comparable across seeds where indices are not).
The metric means with intervals come from `moelab summarize` (see the command in
docs/RESULTS.md). Standard library only.
"""
import csv, glob, json, math, os, re, sys
from collections import defaultdict

T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
        10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 19: 2.093, 24: 2.064, 29: 2.045}


def t975(df):
    if df in T975:
        return T975[df]
    k = max(d for d in T975 if d <= df)
    return T975[k]


def wilson(k, n, z=1.96):
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def mean_ci(xs):
    xs = [x for x in xs if x == x]
    n = len(xs)
    if n == 0:
        return "–"
    m = sum(xs) / n
    if n == 1:
        return f"{m:.3f} (n=1)"
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    h = t975(n - 1) * sd / math.sqrt(n)
    return f"{m:.3f} ± {sd:.3f} [{m - h:.3f}, {m + h:.3f}] (n={n})"


def yaml_scalar(text, key):
    """The first `key: value` at the top level of a run's config.yaml (enough for these keys)."""
    m = re.search(r"^" + re.escape(key) + r":\s*\"?([^\"\n#]*)\"?", text, re.M)
    return m.group(1).strip() if m else None


def expert_kinds(text):
    m = re.search(r"^  expert_kinds:\s*\[([^\]]*)\]", text, re.M)
    if m:
        return [k.strip().strip('"') for k in m.group(1).split(",")]
    m = re.search(r"^  expert_kinds:\s*\n((?:  - .*\n)+)", text, re.M)
    return [l.strip()[2:].strip().strip('"') for l in m.group(1).splitlines()] if m else []


def load_run(d):
    try:
        s = json.load(open(os.path.join(d, "summary.json")))
    except (OSError, ValueError):
        return None
    if s.get("status") != "ok":
        return None
    cfg = open(os.path.join(d, "config.yaml")).read()
    rows = list(csv.DictReader(open(os.path.join(d, "metrics.csv"))))
    if not rows:
        return None
    kinds = expert_kinds(cfg)
    shares = defaultdict(float)  # (layer, habitat, kind) -> share
    last = rows[-1]["epoch"]
    path = os.path.join(d, "routing_labels.csv")
    if os.path.exists(path):
        for r in csv.DictReader(open(path)):
            if r["epoch"] == last and r["split"] == "val":
                e = int(r["expert"])
                kind = kinds[e] if e < len(kinds) else f"expert{e}"
                shares[(int(r["layer"]), r["label_name"], kind)] += float(r["share"])
    after = int(float(yaml_scalar(cfg, "  seed_rule_after") or 10))
    return {"dir": d, "recipe": s.get("experiment"), "seed": s.get("seed"), "rows": rows, "kinds": kinds,
            "shares": shares, "after": after}


def num(row, key):
    try:
        return float(row.get(key, "nan"))
    except ValueError:
        return float("nan")


def main(argv):
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    dirs = []
    for a in argv:
        for sw in glob.glob(a):
            for d in sorted(glob.glob(os.path.join(sw, "[0-9][0-9][0-9]"))):
                dirs.append(d)
    runs = [r for r in (load_run(d) for d in dirs) if r]
    if not runs:
        print("cod-study-report: no finished runs under " + " ".join(argv), file=sys.stderr)
        return 1
    by = defaultdict(list)
    for r in runs:
        by[r["recipe"]].append(r)
    order = sorted(by, key=lambda k: ["cod-static", "cod-anti-collapse", "cod-aux-free", "cod-dense"].index(k)
                   if k in ("cod-static", "cod-anti-collapse", "cod-aux-free", "cod-dense") else 9)

    print("### Collapse rates (last epoch; Wilson 95% intervals)\n")
    print("| recipe | runs | moelab: any layer | layer 1 | layer 2 | layer 3 | layer 4 | moelab: any epoch after warm-up | seed rule: collapsed | seed rule: unstable |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    flagged = {}
    for k in order:
        rs = by[k]
        n = len(rs)

        def rate(c):
            lo, hi = wilson(c, n)
            return f"{c}/{n} [{lo:.2f}, {hi:.2f}]"

        anyl = [num(r["rows"][-1], "collapsed_layers") > 0 for r in rs]
        per = [sum(num(r["rows"][-1], f"moe{l}_collapsed") == 1 for r in rs) for l in (1, 2, 3, 4)]
        ever = sum(any(num(row, "collapsed_layers") > 0 for row in r["rows"] if int(row["epoch"]) > r["after"])
                   for r in rs)
        lbw = [num(r["rows"][-1], "seed_lb_weighted") for r in rs]
        has_lb = any(x == x and x > 0 for x in lbw)
        sc = rate(sum(x < 1e-4 for x in lbw)) if has_lb else "n/a (no balance loss)"
        su = rate(sum(x > 0.01 for x in lbw)) if has_lb else "n/a"
        print(f"| {k} | {n} | {rate(sum(anyl))} | " + " | ".join(rate(c) for c in per) + f" | {rate(ever)} | {sc} | {su} |")
        flagged[k] = anyl

    print("\n### Collapsed runs against the dense baseline (val_iou at the last epoch)\n")
    print("| recipe | runs moelab flags | runs it does not |")
    print("|---|---|---|")
    for k in order:
        rs = by[k]
        a = [num(r["rows"][-1], "val_iou") for r, f in zip(rs, flagged[k]) if f]
        b = [num(r["rows"][-1], "val_iou") for r, f in zip(rs, flagged[k]) if not f]
        print(f"| {k} | {mean_ci(a)} | {mean_ci(b)} |")

    print("\n### Habitat x expert kind: share of each habitat's validation dispatch (last epoch, mean over runs)\n")
    for k in order:
        rs = by[k]
        kinds = []
        for r in rs:
            for kd in r["kinds"]:
                if kd not in kinds:
                    kinds.append(kd)
        habitats = sorted({h for r in rs for (_, h, _) in r["shares"]})
        layers = sorted({l for r in rs for (l, _, _) in r["shares"]})
        if not habitats or len(kinds) < 2:
            continue
        print(f"**{k}** ({len(rs)} runs; a uniform router gives each kind its number of experts / {len(rs[0]['kinds'])})\n")
        print("| layer | habitat | " + " | ".join(kinds) + " | top two |")
        print("|---|---|" + "---|" * len(kinds) + "---|")
        for l in layers:
            for h in habitats:
                v = [sum(r["shares"].get((l, h, kd), 0.0) for r in rs) / len(rs) for kd in kinds]
                top = sorted(range(len(kinds)), key=lambda i: -v[i])[:2]
                print(f"| {l} | {h} | " + " | ".join(f"{x:.2f}" for x in v) + " | " +
                      ", ".join(kinds[i] for i in top) + " |")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
