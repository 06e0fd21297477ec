"""Serve the digits classifier under the SageMaker scikit-learn inference contract.

The serving container imports this module (SAGEMAKER_PROGRAM=inference.py, from the training's source dir) and
calls model_fn once at start. input_fn and output_fn are left to the framework's defaults: a request in
application/json, text/csv or application/x-npy (64 pixel values per row, no label, no header) is decoded into a
numpy array, and the prediction is encoded in the Accept type (default application/json).
"""
import os
import pickle

import numpy as np


def model_fn(model_dir):
    """What train.py saved to SM_MODEL_DIR, unpacked from model.tar.gz into model_dir."""
    path = os.path.join(model_dir, "model.pkl")
    with open(path, "rb") as handle:
        model = pickle.load(handle)
    print(f"loaded {type(model).__name__} from {path}", flush=True)
    return model


def predict_fn(input_data, model):
    """The default predict_fn, except that one row sent alone is predicted as a batch of one: the default
    input_fn squeezes a one-row CSV to a flat array, which scikit-learn's predict refuses."""
    return model.predict(np.atleast_2d(input_data))
