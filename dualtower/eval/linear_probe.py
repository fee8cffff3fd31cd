"""Linear probe: logistic regression on frozen image features, weight decay chosen on a validation split."""

from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import UserError
from .embed import ImageEmbeddings
from .results import ClassificationResult
from .zeroshot import scores

WEIGHT_DECAYS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def linear_probe(train: ImageEmbeddings, test: ImageEmbeddings, classnames: list[str], val_fraction: float = 0.2,
                 seed: int = 0) -> ClassificationResult:
    """Fit on (train minus a validation split) for each weight decay, keep the best on validation, refit on the
    whole train set, and score on test. Weight decay wd corresponds to scikit-learn's C = 1 / (wd * n)."""
    import torch
    from sklearn.linear_model import LogisticRegression

    x, y = train.features.numpy().astype(np.float64), train.labels.numpy()
    if (y < 0).any() or (test.labels < 0).any():
        raise UserError("a linear probe needs labelled data (sources with classes)")
    order = np.random.default_rng(seed).permutation(len(y))
    n_val = max(1, int(len(y) * val_fraction))
    val, fit = order[:n_val], order[n_val:]

    def model(wd, n):
        return LogisticRegression(C=1.0 / (wd * n), max_iter=2000)

    val_acc = {}
    for wd in WEIGHT_DECAYS:
        clf = model(wd, len(fit)).fit(x[fit], y[fit])
        val_acc[wd] = float((clf.predict(x[val]) == y[val]).mean())
    best = max(WEIGHT_DECAYS, key=lambda wd: (val_acc[wd], wd))  # ties: the stronger regulariser
    clf = model(best, len(y)).fit(x, y)
    proba = np.full((len(test.labels), len(classnames)), -np.inf)
    proba[:, clf.classes_] = clf.predict_log_proba(test.features.numpy().astype(np.float64))
    result = scores(torch.from_numpy(proba), test.labels, classnames)
    return dataclasses.replace(result, weight_decay=best, validation_top1=val_acc)
