#!/bin/sh
# A nearest-centroid classifier on one numeric column, in POSIX sh + awk (no Python needed).
#
# SageMaker-style contract: hyperparameters arrive as arguments (--column 3) and as SM_HP_<NAME>
# environment variables (JSON-encoded); the data channel is $SM_CHANNEL_TRAINING (CSV files with a
# header row, the class label in the last column) and everything written to $SM_MODEL_DIR is the model.
#
#   --column N   1-based index of the feature column to learn from (default 3)
#   --holdout K  every K-th data row is held out to measure accuracy (default 5)
#
# Outputs: $SM_MODEL_DIR/model.txt (one line per class: label, mean, standard deviation, count) and
# $SM_MODEL_DIR/metrics.json ({"rows", "train_rows", "test_rows", "classes", "column", "accuracy",
# "train_accuracy"}). Run by hand from the template folder: sh train/train.sh --column 2
set -eu
LC_ALL=C
export LC_ALL

fail() {
    echo "error: $*" >&2
    # SageMaker reports the contents of /opt/ml/output/failure as the job's FailureReason.
    if [ -n "${SM_OUTPUT_DIR:-}" ] && [ -d "$SM_OUTPUT_DIR" ]; then
        printf '%s\n' "$*" > "$SM_OUTPUT_DIR/failure"
    fi
    exit 1
}

unquote() {
    # SM_HP_* values are JSON: 3 or "3".
    printf '%s' "$1" | tr -d '"'
}

column=$(unquote "${SM_HP_COLUMN:-3}")
holdout=$(unquote "${SM_HP_HOLDOUT:-5}")
while [ $# -gt 0 ]; do
    case "$1" in
        --column|-column)
            [ $# -ge 2 ] || fail "$1 needs a value"
            column=$2; shift 2 ;;
        --column=*) column=${1#*=}; shift ;;
        --holdout|-holdout)
            [ $# -ge 2 ] || fail "$1 needs a value"
            holdout=$2; shift 2 ;;
        --holdout=*) holdout=${1#*=}; shift ;;
        -*)
            echo "ignoring unknown hyperparameter $1" >&2
            shift
            if [ $# -gt 0 ]; then
                case "$1" in -*) ;; *) shift ;; esac
            fi ;;
        *) echo "ignoring argument $1" >&2; shift ;;
    esac
done

case "$column" in ''|*[!0-9]*) fail "column must be a positive integer, got '$column'" ;; esac
case "$holdout" in ''|*[!0-9]*) fail "holdout must be an integer >= 2, got '$holdout'" ;; esac
[ "$column" -ge 1 ] || fail "column must be a positive integer, got '$column'"
[ "$holdout" -ge 2 ] || fail "holdout must be an integer >= 2, got '$holdout'"

channel=${SM_CHANNEL_TRAINING:-data}
model_dir=${SM_MODEL_DIR:-model}
[ -d "$channel" ] || fail "data channel $channel is not a directory"
set -- "$channel"/*.csv
[ -f "$1" ] || fail "no .csv files in $channel"
mkdir -p "$model_dir"

if ! summary=$(awk -F, -v col="$column" -v holdout="$holdout" \
        -v model="$model_dir/model.txt" -v metrics="$model_dir/metrics.json" '
    function nearest(x,    i, c, d, best, bestd) {
        best = ""
        for (i = 1; i <= k; i++) {
            c = classes[i]; d = x - mean[c]; if (d < 0) d = -d
            if (best == "" || d < bestd) { best = c; bestd = d }
        }
        return best
    }
    { sub(/\r$/, "") }
    FNR == 1 {
        if (col >= NF) { err = "column " col " is not a feature column: " FILENAME " has " NF - 1 " features, then the label"; exit 2 }
        if (feature == "") feature = $col
        next
    }
    NF == 0 { next }
    {
        rows++; label = $NF; x = $col + 0
        if (rows % holdout == 0) { tn++; tx[tn] = x; ty[tn] = label; next }
        trn++; rx[trn] = x; ry[trn] = label
        if (!(label in n)) classes[++k] = label
        n[label]++; s[label] += x; sq[label] += x * x
    }
    END {
        if (err != "") { print "error: " err; exit 2 }
        if (k == 0) { print "error: no training rows"; exit 2 }
        printf "# nearest-centroid on column %d (%s); label<TAB>mean<TAB>sd<TAB>count\n", col, feature > model
        for (i = 1; i <= k; i++) {
            c = classes[i]; mean[c] = s[c] / n[c]; v = sq[c] / n[c] - mean[c] * mean[c]; if (v < 0) v = 0
            printf "%s\t%.6g\t%.6g\t%d\n", c, mean[c], sqrt(v), n[c] > model
        }
        close(model)
        correct = 0; for (j = 1; j <= tn; j++) if (nearest(tx[j]) == ty[j]) correct++
        fit = 0; for (j = 1; j <= trn; j++) if (nearest(rx[j]) == ry[j]) fit++
        acc = tn ? correct / tn : 0
        printf "{\"rows\": %d, \"train_rows\": %d, \"test_rows\": %d, \"classes\": %d, \"column\": %d, \"accuracy\": %.6f, \"train_accuracy\": %.6f}\n", rows, trn, tn, k, col, acc, fit / trn > metrics
        close(metrics)
        printf "trained on %d rows of %s (column %d), tested on %d: accuracy %.4f\n", trn, feature, col, tn, acc
    }' "$@"); then
    fail "${summary#error: }"
fi
echo "$summary"
cat "$model_dir/model.txt"
cat "$model_dir/metrics.json"
