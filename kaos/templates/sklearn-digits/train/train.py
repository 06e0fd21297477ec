"""Train a handwritten-digit classifier (scikit-learn) under the SageMaker script-mode contract.

SageMaker (and kaos offline) passes hyperparameters as --name value arguments, mounts the data channel at
SM_CHANNEL_TRAINING and uploads whatever is written to SM_MODEL_DIR as model.tar.gz.

The solver's max_iter is spread over --epochs warm-started fits, and each epoch prints its training loss and
validation accuracy as JSON lines ({"metric": ..., "step": ..., "value": ...}): kaos reads them from the log into
the job's metric series (min, max and last in `kaos train list`'s columns, charts in `kaos ui`).
"""
import argparse
import csv
import json
import os
import pickle
import warnings

from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, log_loss
from sklearn.model_selection import train_test_split


def load(channel_dir):
    rows = []
    for name in sorted(os.listdir(channel_dir)):
        if name.endswith(".csv"):
            with open(os.path.join(channel_dir, name), newline="") as handle:
                reader = csv.reader(handle)
                next(reader)  # header
                rows.extend(reader)
    features = [[float(v) for v in row[:-1]] for row in rows]
    labels = [int(row[-1]) for row in rows]
    return features, labels


def log_metric(name, step, value):
    print(json.dumps({"metric": name, "step": step, "value": round(float(value), 6)}), flush=True)


def main():
    parser = argparse.ArgumentParser()
    # The SageMaker toolkit passes one-letter names with a single dash (-C 1.0), longer ones with two.
    parser.add_argument("-C", "--C", type=float, default=1.0)
    parser.add_argument("--max_iter", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--test_size", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--model-dir", default=os.environ.get("SM_MODEL_DIR", "model"))
    parser.add_argument("--train", default=os.environ.get("SM_CHANNEL_TRAINING", "data"))
    args = parser.parse_args()

    features, labels = load(args.train)
    print(f"loaded {len(features)} examples with {len(features[0])} features")
    x_train, x_test, y_train, y_test = train_test_split(
        features, labels, test_size=args.test_size, random_state=args.seed, stratify=labels
    )
    epochs = max(1, args.epochs)
    model = LogisticRegression(C=args.C, max_iter=max(1, args.max_iter // epochs), warm_start=True)
    with warnings.catch_warnings():
        # An epoch stops at its share of max_iter on purpose; the next one continues from its coefficients.
        warnings.simplefilter("ignore", ConvergenceWarning)
        for epoch in range(epochs):
            model.fit(x_train, y_train)
            log_metric("loss", epoch, log_loss(y_train, model.predict_proba(x_train)))
            log_metric("val_accuracy", epoch, accuracy_score(y_test, model.predict(x_test)))
    predicted = model.predict(x_test)
    metrics = {
        "accuracy": accuracy_score(y_test, predicted),
        "f1_macro": f1_score(y_test, predicted, average="macro"),
        "train_examples": len(x_train),
        "test_examples": len(x_test),
    }
    print(json.dumps(metrics))
    os.makedirs(args.model_dir, exist_ok=True)
    with open(os.path.join(args.model_dir, "model.pkl"), "wb") as handle:
        pickle.dump(model, handle)
    with open(os.path.join(args.model_dir, "metrics.json"), "w") as handle:
        json.dump(metrics, handle, indent=2)


if __name__ == "__main__":
    main()
