"""The demo: learn three interleaved spirals, a classic problem no linear model can solve.

The data is generated here (no download): 2-D points along three spiral arms of one and
a half turns each, with noise.
"""
from __future__ import annotations

import time

import numpy as np

from fastbp.callbacks import Callback
from fastbp._validation import whole_number
from fastbp.model import MLP
from fastbp.trainer import Trainer


def make_spirals(n_samples: int, n_classes: int = 3, turns: float = 1.5, noise: float = 0.03,
                 seed: int = 0):
    """(X, labels): 2-D points on `n_classes` spiral arms, X of shape (n_samples, 2)
    scaled to about unit variance."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, size=n_samples)
    radius = rng.uniform(0.05, 1.0, size=n_samples)
    angle = 2 * np.pi * turns * radius + labels * (2 * np.pi / n_classes)
    points = np.column_stack([radius * np.cos(angle), radius * np.sin(angle)])
    points += rng.normal(0.0, noise, size=points.shape)
    return 2.0 * points, labels


class _Report(Callback):
    """Prints loss, accuracies and speed after each epoch."""

    def __init__(self, model, X_train, y_train, X_test, y_test, epochs):
        self.model, self.epochs = model, epochs
        self.train, self.test = (X_train, y_train), (X_test, y_test)

    def accuracy(self, X, y) -> float:
        return float((self.model.predict(X).argmax(axis=1) == y).mean())

    def on_epoch_end(self, epoch, logs):
        print(f"epoch {epoch + 1:>2}/{self.epochs}  loss {logs['loss']:.4f}  "
              f"train acc {self.accuracy(*self.train):.4f}  "
              f"test acc {self.accuracy(*self.test):.4f}  "
              f"{logs['samples_per_second']:>12,.0f} samples/s")


def run(epochs: int = 10, n_samples: int = 60_000, hidden: int = 128, batch_size: int = 32,
        learning_rate: float = 0.05, dtype: str = "float32", seed: int = 0,
        n_threads=None) -> float:
    """Train, print progress per epoch, return the test accuracy."""
    # (a count below 1 would slice the test rows off the end instead)
    n_samples = whole_number(n_samples, "the training rows (n_samples, --samples)", 1)
    features, labels = make_spirals(n_samples + 10_000, seed=seed)
    X_train, y_train = features[:n_samples], labels[:n_samples]
    X_test, y_test = features[n_samples:], labels[n_samples:]

    model = MLP([features.shape[1], hidden, hidden, 3], ["relu", "relu", "softmax"],
                dtype=dtype, seed=seed)
    trainer = Trainer("categorical_crossentropy", learning_rate=learning_rate, epochs=epochs,
                      batch_size=batch_size, seed=seed, n_threads=n_threads)
    print(f"fastbp demo: 3 spirals, {n_samples:,} training and {len(y_test):,} test rows")
    print(f"{model!r}, {model.n_params:,} parameters; SGD, batch {batch_size}, "
          f"learning rate {learning_rate}")
    report = _Report(model, X_train, y_train, X_test, y_test, epochs)
    started = time.perf_counter()
    history = trainer.fit(model, X_train, y_train, callbacks=[report])
    elapsed = time.perf_counter() - started
    accuracy = report.accuracy(X_test, y_test)
    training = sum(history.seconds)
    speed = f"{history.epochs * n_samples / training:,.0f}" if training > 0 else "no"
    print(f"trained {history.epochs} epochs in {training:.2f} s "
          f"({speed} samples/s; {elapsed:.2f} s with "
          f"the per-epoch evaluation)")
    print(f"final test accuracy: {accuracy:.4f}")
    return accuracy
