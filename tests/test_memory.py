"""A fit allocates nothing per step: its peak memory does not grow with epochs or batches."""
import tracemalloc

import numpy as np
import pytest

import fastbp


def peak_bytes_of_fit(n_samples, epochs, batch_size, optimizer="sgd", dropout=0.0):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n_samples, 20)).astype(np.float32)
    y = rng.integers(0, 5, size=n_samples)
    model = fastbp.MLP([20, 64, 5], ["relu", "softmax"], seed=0, dropout=dropout)
    trainer = fastbp.Trainer("cce", optimizer=optimizer, epochs=epochs, batch_size=batch_size,
                             seed=0, n_threads=1)
    trainer.fit(model, X, y)            # warm up: imports, thread control, caches
    trainer = fastbp.Trainer("cce", optimizer=optimizer, epochs=epochs, batch_size=batch_size,
                             seed=0, n_threads=1)
    tracemalloc.start()
    try:
        trainer.fit(model, X, y)
        return tracemalloc.get_traced_memory()[1], model
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("optimizer, dropout", [("sgd", 0.0), ("adam", 0.0), ("sgd", 0.3)])
def test_peak_memory_does_not_grow_with_epochs(optimizer, dropout):
    one, _ = peak_bytes_of_fit(2000, 1, 32, optimizer, dropout)
    many, _ = peak_bytes_of_fit(2000, 30, 32, optimizer, dropout)
    # the history grows by a few floats an epoch; nothing else may
    assert many - one < 30 * 1024, (one, many)


def test_peak_memory_does_not_grow_with_batches():
    """Ten times the rows (and batches): only the row order and its identity (8 bytes a
    row each) may grow."""
    few, model = peak_bytes_of_fit(1000, 2, 16)
    many, _ = peak_bytes_of_fit(10_000, 2, 16)
    assert many - few < 9000 * 16 + 16 * 1024, (few, many)


def test_peak_memory_is_parameters_state_and_one_batch():
    """Peak = workspace (one batch of activations, deltas, the batch copy) + optimizer state
    + the per-epoch backup of parameters and state + the row order + a small constant."""
    n_samples, batch_size = 5000, 64
    peak, model = peak_bytes_of_fit(n_samples, 3, batch_size, optimizer="adam")
    itemsize = model.dtype.itemsize
    params = model.n_params * itemsize
    batch = batch_size * sum(model.layer_sizes) * itemsize
    expected = 6 * params + 8 * batch + n_samples * 16  # state (2) + backups (3) + gradient (1)
    assert peak < expected + 64 * 1024, (peak, expected)
