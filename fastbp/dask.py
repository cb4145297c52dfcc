"""Data-parallel training on Dask: local SGD with parameter averaging.

    import fastbp.dask
    history = fastbp.dask.fit(model, trainer, X, Y, client=client, rounds=20)

X and Y are dask arrays chunked by rows. Each round, the current parameters
(`model.to_bytes()`) go to the workers; every chunk (block of rows) is trained, on the worker
that holds it, by a copy of the model for `epochs_per_round` epochs in fastbp's compiled
loop; the driver averages the copies' parameters weighted by their rows and writes the
average into `model`. The data never leaves the workers. See docs/dask.md for the algorithm
and its effect on convergence.

Needs the `dask` extra: pip install "fastbp[dask]".
"""
from __future__ import annotations

import math
import time
import uuid
import warnings

try:
    import dask
    import dask.array as da
except ImportError as error:   # pragma: no cover - exercised only without the extra
    raise ImportError('fastbp.dask needs dask: pip install "fastbp[dask]" '
                      f'(missing: {error.name})') from error

import numpy as np

from fastbp import schedules
from fastbp.callbacks import checked_callbacks
from fastbp.model import MLP
from fastbp.trainer import EpochLoop, EpochResult, History, Trainer, chosen_metrics, \
    validation_set
from fastbp._validation import whole_number

__all__ = ["fit"]

FAN_IN = 8          # partial sums combined per task of the reduction tree
TASK_PREFIX = "fastbp-train"


class _Rates(schedules.Schedule):
    """The learning rate of each local epoch of a round, decided by the driver."""

    def __init__(self, rates):
        self.rates = tuple(float(rate) for rate in rates)

    def _rate(self, epoch, base):
        return self.rates[min(epoch, len(self.rates) - 1)]

    def _arguments(self):
        return {"rates": list(self.rates)}


def _block_seed(entropy: int, round_index: int, block: int) -> int:
    """The seed of one block's trainer in one round: independent streams per (round, block)."""
    sequence = np.random.SeedSequence(entropy, spawn_key=(round_index, block))
    return int(sequence.generate_state(1, np.uint64)[0] >> np.uint64(1))


# ---- what runs on the workers ----
def _pair(x, y, dtype_name, float_targets):
    """One block's rows and targets, together on one worker, in the model's dtype."""
    x = np.ascontiguousarray(x, dtype=dtype_name)
    y = np.ascontiguousarray(y, dtype=dtype_name) if float_targets else np.ascontiguousarray(y)
    return x, y


def _train_block(model_bytes, trainer_arguments, part, seed, rates):
    """Train a copy of the model on one block; returns its row-weighted partial sums."""
    X, Y = part
    model = MLP.from_bytes(model_bytes)
    trainer = Trainer(**{**trainer_arguments, "seed": seed, "epochs": len(rates),
                         "schedule": _Rates(rates), "max_time": None})
    history = trainer.fit(model, X, Y)
    rows = X.shape[0]
    last_loss = history.loss[-1] if history.loss else float("nan")
    return {"sum": model.parameter_vector(np.float64) * rows, "rows": rows,
            "loss": last_loss * rows, "diverged": bool(history.diverged)}


def _combine(*parts):
    """Add partial sums, in the order given (the tree is fixed, so the sum is reproducible)."""
    total = {"sum": parts[0]["sum"].copy(), "rows": parts[0]["rows"],
             "loss": parts[0]["loss"], "diverged": parts[0]["diverged"]}
    for part in parts[1:]:
        total["sum"] += part["sum"]
        total["rows"] += part["rows"]
        total["loss"] += part["loss"]
        total["diverged"] = total["diverged"] or part["diverged"]
    return total


# ---- the driver ----
def _client_for(client):
    """The distributed client to use: the one given, else the default one, else None
    (dask's local scheduler)."""
    if client is not None:
        return client
    try:
        from distributed import default_client
    except ImportError:
        return None
    try:
        return default_client()
    except ValueError:
        return None


def _check_arrays(model, X, Y, loss):
    for array, name in ((X, "X"), (Y, "Y")):
        if not isinstance(array, da.Array):
            raise TypeError(f"{name} must be a dask array (dask.array.from_array, "
                            f"from_zarr, ...); got {type(array).__name__}")
        if any(math.isnan(size) for size in array.shape):
            raise ValueError(f"{name} has unknown chunk sizes; call "
                             f"{name}.compute_chunk_sizes() first")
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n_samples, {model.layer_sizes[0]}); got shape {X.shape}")
    if X.shape[1] != model.layer_sizes[0]:
        raise ValueError(f"X has {X.shape[1]} columns; the model's input layer has "
                         f"{model.layer_sizes[0]}")
    if Y.ndim not in (1, 2):
        raise ValueError(f"Y must be 1-D (labels) or 2-D (n_samples, n_outputs); got shape "
                         f"{Y.shape}")
    if Y.shape[0] != X.shape[0]:
        raise ValueError(f"Y has {Y.shape[0]} rows but X has {X.shape[0]}")
    if X.shape[0] == 0:
        raise ValueError("X is empty: it has no rows")
    if X.numblocks[1] != 1:
        X = X.rechunk({1: -1})
    Y = Y.rechunk({0: X.chunks[0], **({1: -1} if Y.ndim == 2 else {})})
    float_targets = not loss.takes_labels(Y.shape, model.layer_sizes[-1])
    return X, Y, float_targets


def _persisted_pairs(X, Y, dtype_name, float_targets, client, name):
    """One (x, y) pair per non-empty chunk of rows, computed once and kept where it is
    computed; returns (pairs, the chunks' indices)."""
    sizes = X.chunks[0]
    pairs = [dask.delayed(_pair, pure=True)(x, y, dtype_name, float_targets,
                                            dask_key_name=f"{name}-data-{index}")
             for index, (x, y, size) in enumerate(zip(X.to_delayed().ravel(),
                                                      Y.to_delayed().ravel(), sizes))
             if size > 0]
    blocks = [index for index, size in enumerate(sizes) if size > 0]
    pairs = client.persist(pairs) if client is not None else list(dask.persist(*pairs))
    return pairs, blocks


def _tree(parts, name):
    """Sum the blocks' results by a fixed tree of _combine tasks; returns the root."""
    level = 0
    while len(parts) > 1:
        parts = [dask.delayed(_combine, pure=False)(
                     *parts[start:start + FAN_IN],
                     dask_key_name=f"{name}-sum-{level}-{start // FAN_IN}")
                 for start in range(0, len(parts), FAN_IN)]
        level += 1
    return parts[0]


def fit(model: MLP, trainer: Trainer, X, Y, client=None, rounds=None, epochs_per_round=1,
        validation_data=None, callbacks=None, verbose: int = 0) -> History:
    """Train `model` in place on dask arrays X, Y by local SGD with parameter averaging.

    model: a fastbp.MLP; its parameters are the starting point and receive the average
        after every round.
    trainer: a fastbp.Trainer; its loss, optimizer, learning_rate, schedule, batch_size,
        shuffle, seed, weight decay, clipping and class_weight apply to each block's local
        training. Its `epochs` gives the default number of rounds.
    X: dask array (n_samples, n_features), chunked by rows; Y: dask array of targets
        (n_samples, n_outputs), or one class label per row for cross-entropy; Y is rechunked
        to X's row chunks. Each chunk of rows is one local model: choose chunks of at least
        a few batches, and at least as many chunks as the cluster has worker threads.
    client: a dask.distributed.Client; None uses the default client, or dask's local
        scheduler when there is none.
    rounds: rounds of (broadcast, train locally, average); default
        ceil(trainer.epochs / epochs_per_round).
    epochs_per_round: local epochs each block trains between two averagings.
    validation_data: (X_val, Y_val) numpy arrays, evaluated on the driver after each round
        (val_loss and the default metrics).
    callbacks: fastbp.callbacks.Callback objects; each round counts as one epoch for them
        (EarlyStopping, ModelCheckpoint, ... work per round).
    verbose: 1 prints one line per round.

    Returns a fastbp.History with one entry per round: "loss" (the row-weighted mean of the
    blocks' training loss in their last local epoch), "learning_rate", "seconds",
    "samples_per_second", and the validation values. The blocks' seeds are derived from
    trainer.seed, the round and the block's index, and the average is summed in a fixed
    order, so a run is reproducible for a given seed, chunking and thread count, whichever
    workers run the tasks (and when a task is re-run after a worker is lost).
    """
    if not isinstance(model, MLP):
        raise TypeError(f"model must be a fastbp.MLP; got {type(model).__name__}")
    if not isinstance(trainer, Trainer):
        raise TypeError(f"trainer must be a fastbp.Trainer; got {type(trainer).__name__}")
    spec = trainer.spec()
    spec.check_dtype(model.dtype)      # here, not only in each block's fit on the workers
    loss = spec.loss
    epochs_per_round = whole_number(epochs_per_round, "epochs_per_round", 1)
    if rounds is None:
        rounds = -(-spec.epochs // epochs_per_round)
    rounds = whole_number(rounds, "rounds", 0)
    callbacks = checked_callbacks(callbacks)
    validation, metric_functions = None, []
    if validation_data is not None:
        validation = validation_set(model, loss, validation_data)
        metric_functions = chosen_metrics(None, loss, model.layer_sizes[-1])
    X, Y, float_targets = _check_arrays(model, X, Y, loss)
    client = _client_for(client)
    entropy = trainer.seed if trainer.seed is not None else \
        int(np.random.SeedSequence().generate_state(1, np.uint64)[0])
    name = f"{TASK_PREFIX}-{uuid.uuid4().hex[:12]}"
    arguments = trainer.arguments()

    pairs, blocks = _persisted_pairs(X, Y, model.dtype.name, float_targets, client, name)

    def train_round(round_index, rates):
        """One round: broadcast, train every block, average (an EpochLoop step)."""
        started = time.perf_counter()
        model_bytes = dask.delayed(model.to_bytes(), name=f"{name}-model-{round_index}")
        results = [dask.delayed(_train_block, pure=False)(
                       model_bytes, arguments, pair,
                       _block_seed(entropy, round_index, block), rates,
                       dask_key_name=f"{name}-r{round_index}-b{block}")
                   for pair, block in zip(pairs, blocks)]
        root = _tree(results, f"{name}-r{round_index}")
        total = client.compute(root).result() if client is not None else dask.compute(root)[0]
        average = total["sum"] / total["rows"]
        if not np.isfinite(average).all():   # not expected: blocks roll back divergence
            warnings.warn(f"round {round_index + 1}: the averaged parameters are not "
                          f"finite; the model keeps those of the previous round",
                          RuntimeWarning, stacklevel=4)
            return EpochResult(diverged=True)
        model.set_parameter_vector(average)
        if total["diverged"]:
            warnings.warn(f"round {round_index + 1}: the loss diverged on some blocks "
                          f"(their last epoch was rolled back); training stops. Try a "
                          f"smaller learning_rate.", RuntimeWarning, stacklevel=4)
        return EpochResult(total["loss"] / total["rows"], time.perf_counter() - started,
                           total["rows"] * epochs_per_round, diverged=total["diverged"])

    def report(round_index, logs):
        shown = "  ".join(f"{key} {value:.4g}" for key, value in logs.items()
                          if key not in ("learning_rate", "samples_per_second"))
        print(f"round {round_index + 1}/{rounds}  {shown}", flush=True)

    history = History(n_samples=int(X.shape[0]))
    loop = EpochLoop(model, loss, spec.schedule, spec.optimizer.learning_rate, callbacks,
                     history, validation, metric_functions, spec.max_time,
                     epochs_per_step=epochs_per_round, report=report if verbose else None)
    try:
        return loop.run(rounds, 0, train_round)
    finally:
        del pairs      # releases the blocks' copies on the workers
