"""Why olps's defaults miss four streams of the learning suite (issue 17): River's own pipelines
on those streams, with the StandardScaler updated before the row is scaled for learning (River's
pipeline order) or after (olps's order: a row is scaled with the statistics of the rows before
it), for the best peer of each stream and for SGD at its three rates.

Run `olps bench learn --python .venv/bin/python` first (it writes the streams to bench/data/),
then `.venv/bin/python bench/scaler_order.py`. Results: docs/BENCHMARKS.md, "Learning suite: what
the four misses are".
"""

import csv
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from river_peers import row_dict  # noqa: E402


def load(data_dir, name):
    with open(os.path.join(data_dir, f"{name}.csv")) as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = [
            [None if v == "" else (v if h.startswith("cat:") else float(v)) for h, v in zip(header, row)]
            for row in reader
        ]
    return header, rows


def accuracy(header, rows, optimizer, order):
    from river import linear_model, preprocessing

    scaler = preprocessing.StandardScaler()
    model = linear_model.LogisticRegression(optimizer=optimizer)
    correct = 0
    for row in rows:
        x = row_dict(header, row)
        y = row[-1] >= 0.5
        p = model.predict_proba_one(scaler.transform_one(x)).get(True, 0.0)
        correct += (p >= 0.5) == y
        if order == "river":
            scaler.learn_one(x)
            scaled = scaler.transform_one(x)
        else:
            scaled = scaler.transform_one(x)
            scaler.learn_one(x)
        model.learn_one(scaled, y)
    return correct / len(rows)


def main():
    from river import optim

    data_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
    best = {
        "breast_cancer": ("AdaGrad(0.1)", lambda: optim.AdaGrad(0.1)),
        "digits_ge5": ("AdaGrad(0.1)", lambda: optim.AdaGrad(0.1)),
        "scales_clf": ("FTRL(0.05)", lambda: optim.FTRLProximal(alpha=0.05)),
        "wide_clf": ("AdaGrad(0.01)", lambda: optim.AdaGrad(0.01)),
    }
    print("stream | best peer | river order | olps order | best SGD, river order | best SGD, olps order")
    for name, (label, make) in best.items():
        header, rows = load(data_dir, name)
        cells = [accuracy(header, rows, make(), order) for order in ("river", "olps")]
        for order in ("river", "olps"):
            cells.append(max(accuracy(header, rows, optim.SGD(lr), order) for lr in (0.001, 0.01, 0.1)))
        print(f"{name} | {label} | " + " | ".join(f"{c:.4f}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
