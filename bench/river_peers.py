#!/usr/bin/env python3
"""The learning suite of `olps bench learn --python PY`: writes the streams as CSV and scores
River's pipelines on them prequentially (predict, then learn, one row at a time).

Streams: scikit-learn's bundled datasets replayed as streams (shuffled with the draw's seed; the
small ones replayed in several shuffled passes so that one row is not worth more than the goal's
margin), and generated streams with targets far from zero, features on scales from 1e-3 to 1e4,
sparse high-cardinality categoricals, and abrupt, gradual and recurring drift. River's own
datasets are not used (they are kept for independent judging).

Peers: StandardScaler | LinearRegression / LogisticRegression with SGD, AdaGrad, Adam and FTRL at
their usual rates (the defaults of River and a decade around them).

Output (stdout): JSON {"river": version, "seed": s, "streams": [{name, kind, file, rows,
description, peers: {pipeline: {"mae"|"accuracy": x}}}]}. CSV format: a header, feature columns,
the label last; a column named `cat:NAME` holds a category (feature `NAME=value`, value 1); an
empty cell is an absent feature.

    python3 bench/river_peers.py --data-dir bench/data --seed 0 [--no-peers] [--only NAME,...]
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np

# --------------------------------------------------------------------------------------------
# Streams. Each generator returns (kind, description, header, rows); a row is a list of cells
# (float, category string, or None for absent) with the label last.


def sklearn_stream(loader, kind, target, description, rng, min_rows=1500, **kwargs):
    from sklearn import datasets

    d = getattr(datasets, loader)(**kwargs)
    X = np.asarray(d.data, dtype=float)
    names = [clean(str(n)) for n in d.feature_names] if hasattr(d, "feature_names") else [
        f"x{i}" for i in range(X.shape[1])
    ]
    y = target(d, X)
    if isinstance(y, tuple):  # (y, column to drop from X)
        y, drop = y
        X = np.delete(X, drop, axis=1)
        names = [n for i, n in enumerate(names) if i != drop]
    passes = max(1, min(10, math.ceil(min_rows / len(X))))
    order = np.concatenate([rng.permutation(len(X)) for _ in range(passes)])
    rows = [list(X[i]) + [float(y[i])] for i in order]
    if passes > 1:
        description += f" ({len(X)} rows, {passes} shuffled passes)"
    return kind, description, names + ["label"], rows


def clean(name):
    out = "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")
    return out or "x"


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def dense(rng, n, d, scales=None, means=None):
    X = rng.normal(size=(n, d))
    if means is not None:
        X = X + means
    if scales is not None:
        X = X * scales
    return X


def label_rows(kind, X, margin, rng, noise, names):
    if kind == "linear":
        y = margin + rng.normal(scale=noise, size=len(margin))
    else:
        y = (rng.random(len(margin)) < sigmoid(margin)).astype(float)
    return [list(X[i]) + [float(y[i])] for i in range(len(y))], names + ["label"]


def gen_offset(rng, kind):
    n, d = 3000, 5
    X = dense(rng, n, d)
    w = rng.normal(size=d) * 0.5
    if kind == "linear":
        margin = 40.0 + X @ w
        desc = "target centred at 40, 5 standard features, noise sd 0.5"
    else:
        margin = -1.5 + X @ w * 2
        desc = "base rate about 25%, 5 standard features"
    rows, header = label_rows(kind, X, margin, rng, 0.5, [f"x{i}" for i in range(d)])
    return kind, desc, header, rows


def gen_level_walk(rng, kind):
    # A level in the tens that moves a little at every row, plus small effects of 4 features.
    n, d = 4000, 4
    X = dense(rng, n, d)
    level = 60.0 + np.cumsum(rng.normal(scale=0.05, size=n))
    w = rng.normal(size=d) * 0.3
    rows, header = label_rows("linear", X, level + X @ w, rng, 0.3, [f"x{i}" for i in range(d)])
    return "linear", "level about 60 in a slow random walk, small feature effects", header, rows


def gen_scales(rng, kind):
    n, d = 3000, 8
    scales = np.logspace(-3, 4, d)
    means = rng.normal(size=d) * 2
    Z = rng.normal(size=(n, d)) + means
    X = Z * scales
    w = rng.normal(size=d)
    z = (Z - means) @ w
    if kind == "linear":
        margin = 5.0 + z
        desc = "8 features on scales 1e-3..1e4 with offsets, target around 5"
    else:
        margin = 0.3 + 1.5 * z
        desc = "8 features on scales 1e-3..1e4 with offsets"
    rows, header = label_rows(kind, X, margin, rng, 0.5, [f"s{i}" for i in range(d)])
    return kind, desc, header, rows


def zipf_category(rng, n, levels, a=1.3):
    p = 1.0 / np.arange(1, levels + 1) ** a
    p /= p.sum()
    return rng.choice(levels, size=n, p=p)


def gen_sparse_cat(rng, kind):
    n = 6000
    c1 = zipf_category(rng, n, 300)
    c2 = zipf_category(rng, n, 2000, a=1.1)
    e1 = rng.normal(size=300)
    e2 = rng.normal(size=2000) * 0.7
    X = dense(rng, n, 2)
    w = np.array([0.8, -0.5])
    # A third categorical present on a third of the rows only (sparse).
    c3 = zipf_category(rng, n, 50)
    e3 = rng.normal(size=50)
    present = rng.random(n) < 0.33
    z = e1[c1] + e2[c2] + X @ w + np.where(present, e3[c3], 0.0)
    if kind == "linear":
        margin = 20.0 + 2 * z
        noise = 1.0
        desc = "categoricals of 300, 2000 and 50 levels (Zipf; the last on a third of the rows), 2 numeric; target around 20"
    else:
        margin = -0.5 + z
        noise = 0.0
        desc = "categoricals of 300, 2000 and 50 levels (Zipf; the last on a third of the rows), 2 numeric"
    if kind == "linear":
        y = margin + rng.normal(scale=noise, size=n)
    else:
        y = (rng.random(n) < sigmoid(margin)).astype(float)
    rows = []
    for i in range(n):
        rows.append(
            [str(c1[i]), str(c2[i]), str(c3[i]) if present[i] else None, X[i, 0], X[i, 1], float(y[i])]
        )
    return kind, desc, ["cat:city", "cat:item", "cat:promo", "num0", "num1", "label"], rows


def drift_weights(rng, d):
    w1 = rng.normal(size=d)
    w2 = rng.normal(size=d)
    return w1, w2


def gen_drift(rng, kind, mode):
    n, d = 5000, 6
    X = dense(rng, n, d, scales=np.array([1, 10, 0.1, 100, 1, 5.0]), means=np.array([0, 1, 0, 2, -1, 0]))
    Z = (X / np.array([1, 10, 0.1, 100, 1, 5.0])) - np.array([0, 1, 0, 2, -1, 0])
    w1, w2 = drift_weights(rng, d)
    t = np.arange(n)
    if mode == "abrupt":
        a = (t >= n // 2).astype(float)
        desc = "abrupt drift at row 2500 (all weights change)"
    elif mode == "gradual":
        a = np.clip((t - n / 3) / (n / 3), 0, 1)
        desc = "gradual drift from row 1667 to 3333"
    else:
        a = ((t // 1000) % 2).astype(float)
        desc = "recurring drift: two concepts alternating every 1000 rows"
    W = (1 - a)[:, None] * w1 + a[:, None] * w2
    z = np.sum(Z * W, axis=1)
    if kind == "linear":
        level = np.where(a > 0.5, 12.0, 8.0) if mode != "gradual" else 8.0 + 4.0 * a
        margin = level + 2 * z
        desc += "; the level moves from 8 to 12 with it"
    else:
        margin = 1.5 * z
    rows, header = label_rows(kind, X, margin, rng, 0.5, [f"x{i}" for i in range(d)])
    return kind, desc, header, rows


def gen_imbalanced(rng, kind):
    n, d = 5000, 6
    X = dense(rng, n, d)
    w = rng.normal(size=d) * 0.6
    margin = -3.2 + X @ w
    rows, header = label_rows("logistic", X, margin, rng, 0, [f"x{i}" for i in range(d)])
    return "logistic", "rare positives (about 6%), weak features", header, rows


def gen_wide(rng, kind):
    n, d = 4000, 60
    X = dense(rng, n, d)
    # Correlated features: a few latent factors.
    F = rng.normal(size=(n, 5))
    X = X * 0.5 + F @ rng.normal(size=(5, d))
    w = np.zeros(d)
    w[rng.choice(d, 10, replace=False)] = rng.normal(size=10) * 0.3
    if kind == "linear":
        margin = 100.0 + X @ w
        desc = "60 correlated dense features, 10 informative, target around 100"
    else:
        margin = X @ w
        desc = "60 correlated dense features, 10 informative"
    rows, header = label_rows(kind, X, margin, rng, 1.0, [f"w{i:02}" for i in range(d)])
    return kind, desc, header, rows


def streams(seed):
    """(name, builder(rng)) in suite order; each stream has its own generator seeded from the draw."""
    s = []

    def sk(name, *args, **kwargs):
        s.append((name, lambda rng: sklearn_stream(*args, rng=rng, **kwargs)))

    sk(
        "diabetes",
        "load_diabetes",
        "linear",
        lambda d, X: d.target,
        "scikit-learn diabetes, disease progression (25..346) from 10 raw features",
        scaled=False,
    )
    sk(
        "wine_alcohol",
        "load_wine",
        "linear",
        lambda d, X: (X[:, 0], 0),
        "scikit-learn wine, alcohol (11..15) from the other 12 measurements",
    )
    sk(
        "breast_cancer",
        "load_breast_cancer",
        "logistic",
        lambda d, X: d.target.astype(float),
        "scikit-learn breast cancer, benign vs malignant, 30 features on scales 1e-3..1e3",
    )
    sk(
        "wine_class0",
        "load_wine",
        "logistic",
        lambda d, X: (d.target == 0).astype(float),
        "scikit-learn wine, cultivar 0 vs the rest",
    )
    sk(
        "iris_virginica",
        "load_iris",
        "logistic",
        lambda d, X: (d.target == 2).astype(float),
        "scikit-learn iris, virginica vs the rest",
    )
    sk(
        "digits_ge5",
        "load_digits",
        "logistic",
        lambda d, X: (d.target >= 5).astype(float),
        "scikit-learn digits, digit >= 5 from 64 pixels",
    )
    for kind, short in [("linear", "reg"), ("logistic", "clf")]:
        s.append((f"offset_{short}", lambda rng, k=kind: gen_offset(rng, k)))
        s.append((f"scales_{short}", lambda rng, k=kind: gen_scales(rng, k)))
        s.append((f"sparse_cat_{short}", lambda rng, k=kind: gen_sparse_cat(rng, k)))
        for mode in ["abrupt", "gradual", "recurring"]:
            s.append((f"{mode}_{short}", lambda rng, k=kind, m=mode: gen_drift(rng, k, m)))
    s.append(("level_walk_reg", lambda rng: gen_level_walk(rng, "linear")))
    s.append(("imbalanced_clf", lambda rng: gen_imbalanced(rng, "logistic")))
    s.append(("wide_reg", lambda rng: gen_wide(rng, "linear")))
    s.append(("wide_clf", lambda rng: gen_wide(rng, "logistic")))
    return s


def write_csv(path, header, rows):
    with open(path, "w") as f:
        f.write(",".join(header) + "\n")
        for row in rows:
            f.write(",".join("" if v is None else (v if isinstance(v, str) else repr(float(v))) for v in row))
            f.write("\n")


def row_dict(header, row):
    x = {}
    for name, v in zip(header[:-1], row[:-1]):
        if v is None:
            continue
        if name.startswith("cat:"):
            x[f"{name[4:]}={v}"] = 1.0
        else:
            x[name] = float(v)
    return x


# --------------------------------------------------------------------------------------------
# Peers.


def peers(kind):
    from river import linear_model, optim, preprocessing

    grid = [
        ("SGD", lambda lr: optim.SGD(lr), [0.001, 0.01, 0.1]),
        ("AdaGrad", lambda lr: optim.AdaGrad(lr), [0.01, 0.1, 0.5]),
        ("Adam", lambda lr: optim.Adam(lr), [0.001, 0.01, 0.1]),
        ("FTRL", lambda a: optim.FTRLProximal(alpha=a), [0.05, 0.1, 0.5]),
    ]
    model = linear_model.LinearRegression if kind == "linear" else linear_model.LogisticRegression
    out = []
    for name, make, rates in grid:
        for lr in rates:
            label = f"{name}({lr})"
            out.append((label, lambda make=make, lr=lr: preprocessing.StandardScaler() | model(optimizer=make(lr))))
    return out


def score(kind, make, header, rows):
    model = make()
    total, n = 0.0, 0
    for row in rows:
        x = row_dict(header, row)
        y = row[-1]
        if kind == "linear":
            try:
                p = float(model.predict_one(x))
            except (OverflowError, ValueError):
                p = float("inf")
            total += abs(p - y) if math.isfinite(p) else float("inf")
            try:
                model.learn_one(x, y)
            except (OverflowError, ValueError, ZeroDivisionError):
                pass
        else:
            proba = model.predict_proba_one(x).get(True, 0.0)
            total += float((proba >= 0.5) == (y >= 0.5))
            model.learn_one(x, y >= 0.5)
        n += 1
    metric = total / max(n, 1)
    if not math.isfinite(metric):
        metric = float("inf")
    return metric


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.path.join(os.path.dirname(__file__), "data"))
    ap.add_argument("--seed", type=int, default=0, help="the draw: shuffles and generated streams")
    ap.add_argument("--no-peers", action="store_true", help="only write the streams")
    ap.add_argument("--only", default="", help="comma-separated stream names")
    args = ap.parse_args()
    os.makedirs(args.data_dir, exist_ok=True)
    only = {s for s in args.only.split(",") if s}
    import river

    result = {"river": river.__version__, "seed": args.seed, "streams": []}
    import warnings

    warnings.filterwarnings("ignore")
    np.seterr(all="ignore")
    for index, (name, build) in enumerate(streams(args.seed)):
        if only and name not in only:
            continue
        rng = np.random.default_rng([args.seed, index])
        kind, description, header, rows = build(rng)
        path = os.path.join(args.data_dir, f"{name}.csv")
        write_csv(path, header, rows)
        entry = {
            "name": name,
            "kind": kind,
            "file": os.path.abspath(path),
            "rows": len(rows),
            "description": description,
            "peers": {},
        }
        if not args.no_peers:
            started = time.time()
            for label, make in peers(kind):
                metric = score(kind, make, header, rows)
                key = "mae" if kind == "linear" else "accuracy"
                entry["peers"][label] = {key: metric if math.isfinite(metric) else None}
            print(f"river_peers: {name}: {time.time() - started:.1f} s", file=sys.stderr)
        result["streams"].append(entry)
    json.dump(result, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
