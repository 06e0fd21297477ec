"""Train a disease-progression regressor (scikit-learn) on the diabetes data under the SageMaker script-mode contract.

SageMaker (and kaos offline) passes hyperparameters as --name value arguments, mounts the data channel at
SM_CHANNEL_TRAINING and uploads whatever is written to SM_MODEL_DIR as model.tar.gz.

The training is deterministic: a fixed split seed, a fixed random_state for the booster and a fixed pickle
protocol, so the same code, data and hyperparameters give a byte-identical model.pkl.
"""
import argparse
import csv
import json
import math
import os
import pickle

from sklearn.ensemble import GradientBoostingRegressor
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score
from sklearn.model_selection import train_test_split

PICKLE_PROTOCOL = 4  # fixed, so the bytes do not change with the interpreter's default protocol


def load(channel_dir):
    header, rows = None, []
    for name in sorted(os.listdir(channel_dir)):
        if name.endswith(".csv"):
            with open(os.path.join(channel_dir, name), newline="") as handle:
                reader = csv.reader(handle)
                header = next(reader)
                rows.extend(row for row in reader if row)
    if not rows:
        raise SystemExit(f"no CSV rows found in {channel_dir}")
    features = [[float(v) for v in row[:-1]] for row in rows]
    targets = [float(row[-1]) for row in rows]
    return header[:-1], features, targets


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n_estimators", type=int, default=300)
    parser.add_argument("--learning_rate", type=float, default=0.03)
    parser.add_argument("--max_depth", type=int, default=2)
    parser.add_argument("--subsample", type=float, default=0.8)
    parser.add_argument("--test_size", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--model-dir", default=os.environ.get("SM_MODEL_DIR", "model"))
    parser.add_argument("--train", default=os.environ.get("SM_CHANNEL_TRAINING", "data"))
    args = parser.parse_args()

    names, features, targets = load(args.train)
    print(f"loaded {len(features)} examples with {len(names)} features: {', '.join(names)}")
    x_train, x_test, y_train, y_test = train_test_split(
        features, targets, test_size=args.test_size, random_state=args.seed
    )
    model = GradientBoostingRegressor(
        n_estimators=args.n_estimators, learning_rate=args.learning_rate, max_depth=args.max_depth,
        subsample=args.subsample, random_state=args.seed,
    )
    model.fit(x_train, y_train)
    predicted = model.predict(x_test)
    metrics = {
        "r2": r2_score(y_test, predicted),
        "rmse": math.sqrt(mean_squared_error(y_test, predicted)),
        "mae": mean_absolute_error(y_test, predicted),
        "train_examples": len(x_train),
        "test_examples": len(x_test),
    }
    print(json.dumps(metrics))
    os.makedirs(args.model_dir, exist_ok=True)
    with open(os.path.join(args.model_dir, "model.pkl"), "wb") as handle:
        pickle.dump(model, handle, protocol=PICKLE_PROTOCOL)
    with open(os.path.join(args.model_dir, "metrics.json"), "w") as handle:
        json.dump(metrics, handle, indent=2, sort_keys=True)


if __name__ == "__main__":
    main()
