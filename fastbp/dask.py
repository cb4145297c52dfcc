"""Data-parallel training on Dask: local SGD with parameter averaging.

    import fastbp.dask
    history = fastbp.dask.fit(model, trainer, X, Y, client=client, rounds=20)

X and Y are dask arrays chunked by rows. Each round, every chunk (block of rows) is trained,
on the worker that holds it, by a copy of the model for `epochs_per_round` epochs in fastbp's
compiled loop; the copies' parameters are averaged, weighted by their rows, and the
averaging rule makes the next round's start on the workers, while the driver writes the
new parameters into `model` (on a cluster the next round is already submitted by then).
The data never leaves the workers. See docs/dask.md for the algorithm and its effect on
convergence.

Needs the `dask` extra: pip install "fastbp[dask]".
"""
from __future__ import annotations

import contextlib
import math
import sys
import threading
import time
import uuid
import warnings
from typing import NamedTuple

try:
    import dask
    import dask.array as da
except ImportError as error:   # pragma: no cover - exercised only without the extra
    raise ImportError('fastbp.dask needs dask: pip install "fastbp[dask]" '
                      f'(missing: {error.name})') from error

import numpy as np

from fastbp import _core, schedules
from fastbp.callbacks import checked_callbacks
from fastbp.model import MLP
from fastbp.trainer import EpochLoop, EpochResult, History, Trainer, chosen_metrics, \
    class_weight_table, validation_set
from fastbp._validation import as_csr, check_verbose, is_sparse, real_number, \
    targets_are_labels, whole_number

__all__ = ["fit", "placement", "LostDataError", "Trained"]

FAN_IN = 8          # partial sums combined per task of the reduction tree
# How long a fit waits for a worker: on a cluster that has none yet (one still starting,
# or scaled by an adaptive deployment) before it raises TimeoutError, and when every
# worker was lost (a nanny restarts one in seconds) before it raises LostDataError
WORKER_WAIT_SECONDS = 600
# The most a fit's end waits for the last round's averaging on the other workers
# (_ClusterRounds.release): milliseconds, unless a worker is lost or stuck.
AVERAGING_WAIT_SECONDS = 10
TASK_PREFIX = "fastbp-train"
LOCAL = "local"     # the placement's name for dask's local scheduler


class _Rates(schedules.Schedule):
    """The learning rate of each local epoch of a round, decided by the driver."""

    def __init__(self, rates):
        self.rates = tuple(float(rate) for rate in rates)

    def _rate(self, epoch, base):
        return self.rates[min(epoch, len(self.rates) - 1)]

    def _arguments(self):
        return {"rates": list(self.rates)}


def _seed(entropy: int, *spawn_key: int) -> int:
    """A seed from its own stream of the fit's entropy, one per spawn key."""
    sequence = np.random.SeedSequence(entropy, spawn_key=spawn_key)
    return int(sequence.generate_state(1, np.uint64)[0] >> np.uint64(1))


def _block_seed(entropy: int, round_index: int, block: int) -> int:
    """The seed of one block's trainer in one round: independent streams per (round, block)."""
    return _seed(entropy, round_index, block)


def _order_seed(entropy: int, epoch: int, block: int) -> int:
    """The seed of one block's row order in one epoch split into several rounds (a stream
    apart from the trainers' seeds)."""
    return _seed(entropy, epoch, block, 1)


class Piece(NamedTuple):
    """Which rows of its chunk a block trains in a round of an epoch split into `count`
    rounds: the `index`-th of `count` consecutive slices of the chunk's rows, in the
    epoch's order (a permutation drawn from `order_seed`; None: the chunk's own order)."""
    order_seed: int | None
    index: int
    count: int


# ---- what runs on the workers ----
def _pair(x, y, dtype_name, float_targets):
    """One block's rows and targets, together on one worker, in the model's dtype (a
    scipy.sparse chunk stays sparse, as CSR: the fit reads it as such)."""
    x = as_csr(x, "a chunk of X").astype(dtype_name, copy=False) if is_sparse(x) \
        else np.asarray(x, dtype=dtype_name)
    return _aligned_pair(x, np.asarray(y, dtype=dtype_name) if float_targets else y)


class _Pair(NamedTuple):
    """A block's rows and targets as _aligned_pair makes them, here and on any worker
    the pair is sent to: Dask delivers an array it transfers at any byte offset, and the
    fit copies an array that is not aligned for its dtype, which would be every round.
    kept: what the block's last round left on this worker for its next (a _Kept; at most
    one, taken out by the round that uses it), never sent with the pair."""
    x: object
    y: np.ndarray
    kept: list

    def __reduce__(self):
        return _aligned_pair, (self.x, self.y)


def _aligned_pair(x, y) -> _Pair:
    """x and y C-contiguous and aligned for their dtypes (a sparse x: its three arrays),
    each copied only if it is not."""
    if is_sparse(x):
        if not all(part.flags.aligned for part in (x.data, x.indices, x.indptr)):
            x = x.copy()
    else:
        x = np.require(x, None, ["C", "A"])
    return _Pair(x, np.require(y, None, ["C", "A"]), [])


def _epoch_order(n_rows: int, order_seed: int | None) -> np.ndarray:
    """A chunk's rows in the order its epoch's pieces cut (Piece.order_seed)."""
    return np.arange(n_rows) if order_seed is None else \
        np.random.default_rng(order_seed).permutation(n_rows)


def _piece_of(order: np.ndarray, piece: Piece) -> np.ndarray:
    n_rows = order.shape[0]
    return order[piece.index * n_rows // piece.count:(piece.index + 1) * n_rows // piece.count]


def _piece_rows(n_rows: int, piece: Piece) -> np.ndarray:
    """The rows of a chunk of n_rows that `piece` trains."""
    return _piece_of(_epoch_order(n_rows, piece.order_seed), piece)


class _Kept(NamedTuple):
    """What a block's round leaves on the worker that holds the block's rows, for its next
    round there: inputs: the chunk, checked once (Trainer._check_inputs); order:
    (order_seed, the rows in that order) of the last epoch cut into pieces."""
    inputs: object
    order: tuple


def _holders(arrays: list, index: int) -> int:
    """The references to arrays[index] (the list's included) as this code sees them."""
    return sys.getrefcount(arrays[index])


# What _holders counts for an array only its list holds, measured by the same code (an
# interpreter may count the references of a call's arguments differently).
_ONLY_LISTED = _holders([np.empty(0)], 0)


class _Arrays:
    """The arrays a worker's tasks make again every round of a fit (the averaging's
    state, the parameters a block sends, the tree's partial sums), handed out again once
    nothing else holds them: neither Dask's store of results nor a transfer nor a view
    (each holds a reference).
    Dask's workers give freed memory back to the system, so a new array faults its pages
    in as it is first written (the averaging step on 670,000 parameters: 4.3-4.7 ms into
    new arrays, 1.6-1.7 ms into arrays used before). Keeps as many of each shape and
    dtype as were held at once (up to KEEP), for as long as the fit's _Copies lives."""
    KEEP = 8

    def __init__(self):
        self.lock, self.made = threading.Lock(), {}

    def empty(self, shape, dtype) -> np.ndarray:
        key = (shape if isinstance(shape, tuple) else (shape,), np.dtype(dtype))
        with self.lock:      # (tasks on a worker's threads, or dask's local scheduler)
            arrays = self.made.setdefault(key, [])
            for index in range(len(arrays)):
                if _holders(arrays, index) == _ONLY_LISTED:
                    return arrays[index]
            array = np.empty(*key)
            if len(arrays) < self.KEEP:
                arrays.append(array)
            return array


class _Copies:
    """The fit's model as it began (model_bytes) and, on each worker, the copies of it
    that training tasks decoded there, each with its fit's memory (Trainer's one-epoch
    buffers), for the next tasks there: as many as ran there at once, whatever the
    number of blocks; and the worker's _Arrays. Dask's workers give freed memory back to
    the system, so new arrays fault page by page when first written. A worker's copy of
    this object starts with none (never sent)."""

    def __init__(self, model_bytes: bytes):
        self.model_bytes, self.spare, self.arrays = model_bytes, [], _Arrays()

    def __reduce__(self):
        return _Copies, (self.model_bytes,)

    def take(self) -> tuple:
        """(a copy of the model, its fit's buffers), to give back when done with."""
        try:
            return self.spare.pop()
        except IndexError:
            return MLP.from_bytes(self.model_bytes), {}

    def give_back(self, model: MLP, buffers: dict) -> None:
        self.spare.append((model, buffers))


def _block_weight(trainer, inputs, n_outputs, n_rows, rows=None) -> float:
    """What a block counts for in its round's average and loss: the total class weight of
    the rows it trains (rows: those of its chunk, None: all n_rows) under a dict
    class_weight, so that the average weighs every row as Trainer.fit on all of them
    would; else its rows (with class_weight="balanced", the chunk's own, they count
    alike). 0: its rows all weigh 0, and it trains nothing."""
    if not isinstance(trainer.class_weight, dict):
        return float(n_rows)
    classes, n_classes = trainer.spec().loss.classes_of(inputs.targets, inputs.labels,
                                                        n_outputs)
    table = class_weight_table(trainer.class_weight, n_classes)
    return float(table[classes if rows is None else classes[rows]].sum())


def _chunk_weight(copies, trainer_arguments, part) -> float:
    """The total class weight of a chunk's rows (_block_weight), its checked inputs left
    with the chunk for its first round (fit asks before the first round when a class
    may weigh 0)."""
    trainer = Trainer(**trainer_arguments)
    model, buffers = copies.take()
    try:
        try:
            kept = part.kept.pop()
        except IndexError:
            kept = _Kept(trainer._check_inputs(model, part.x, part.y), ())
        part.kept.append(kept)
        return _block_weight(trainer, kept.inputs, model.layer_sizes[-1], part.x.shape[0])
    finally:
        copies.give_back(model, buffers)


def _train_block(copies, start, trainer_arguments, part, seed, rates, n_threads, block,
                 piece=None):
    """Train a copy of the model (copies: a _Copies of the model as the fit began) on one
    block (or on a piece of it) with n_threads BLAS threads, from the round's start (a
    _State, or the _Advanced of the round before, on this worker). Returns its parameters
    in the model's dtype, its rows and their weight (_block_weight: _combine weights the
    parameters by it in float64, half the bytes to send of a float32 model), and where it
    ran (block -> (worker, rows, threads))."""
    trainer = Trainer(**{**trainer_arguments, "seed": seed, "epochs": len(rates),
                         "schedule": _Rates(rates), "max_time": None, "n_threads": n_threads})
    model, trainer._buffers = copies.take()
    try:        # (a round submitted again may run while the first still does: it makes its own)
        kept = part.kept.pop()
    except IndexError:
        kept = _Kept(trainer._check_inputs(model, part.x, part.y), ())
    np.copyto(model._params, _start_state(start).start)
    rows, order = None, kept.order
    if piece is not None:       # its rows of the chunk, read in place (the bits of a fit on
        if not order or order[0] != piece.order_seed:          # a copy of them)
            order = (piece.order_seed, _epoch_order(part.x.shape[0], piece.order_seed))
        rows = _piece_of(order[1], piece)
    trained_rows = part.x.shape[0] if rows is None else rows.shape[0]
    weight = _block_weight(trainer, kept.inputs, model.layer_sizes[-1], trained_rows, rows)
    last_loss, diverged, seconds = 0.0, False, 0.0
    if weight > 0:      # (rows that all weigh 0 teach nothing: the copy stays at the start)
        history = trainer._fit_rows(model, part.x, part.y, rows, checked=kept.inputs)
        last_loss = history.loss[-1] if history.loss else float("nan")
        diverged, seconds = bool(history.diverged), float(sum(history.seconds))
    # The parameters go out as a copy: the model trains the next round while a worker
    # may still be receiving them.
    parameters = copies.arrays.empty(model._params.shape, model._params.dtype)
    np.copyto(parameters, model._params)
    result = {"parameters": parameters, "rows": trained_rows, "weight": weight,
              "loss": last_loss * weight, "diverged": diverged,
              "trained": {block: Trained(_worker_address(), trained_rows, n_threads,
                                         seconds)}}
    copies.give_back(model, trainer._buffers)
    if not part.kept:
        part.kept.append(kept._replace(order=order))
    return result


class Trained(NamedTuple):
    """Where one block trained in one round (history.placement's entries)."""
    worker: str         # the dask worker's address ("local" on dask's local scheduler)
    rows: int
    threads: int        # BLAS threads of its fit
    seconds: float      # in the compiled training loop


def _worker_address() -> str:
    """The address of the dask worker running this task; "local" off a distributed worker."""
    try:
        from distributed import get_worker
        return get_worker().address
    except (ImportError, ValueError):
        return LOCAL


def _terms(parts) -> tuple:
    """The vectors and factors of the weighted sum of `parts`: a block's parameters times
    its weight (its rows, without a dict class_weight), or a partial sum _combine made
    (times 1)."""
    vectors = [part["sum"] if "sum" in part else part["parameters"] for part in parts]
    factors = np.array([1.0 if "sum" in part else part["weight"] for part in parts])
    return vectors, factors


def _tally(parts) -> dict:
    """What the driver records of `parts`: their rows, weight, loss (times the weight),
    divergence and placements."""
    trained = {}
    for part in parts:
        trained.update(part["trained"])
    return {"rows": sum(part["rows"] for part in parts),
            "weight": sum(part["weight"] for part in parts),
            "loss": sum(part["loss"] for part in parts),
            "diverged": any(part["diverged"] for part in parts), "trained": trained}


def _combine(copies, *parts):
    """Add partial sums, in the order given (the tree is fixed, so the sum is reproducible):
    a block's parameters times its weight (_block_weight), in float64, or a sum _combine
    made before; into
    an array of copies.arrays (a _Copies)."""
    vectors, factors = _terms(parts)
    total = copies.arrays.empty(vectors[0].shape[0], np.float64)
    _core.weighted_sum(vectors, factors, total)
    return {"sum": total, **_tally(parts)}


class _State(NamedTuple):
    """The averaging's state after a round: where the next round's copies start."""
    weights: np.ndarray          # float64: the global parameters W (the model holds them rounded)
    buffer: np.ndarray | None    # block momentum's D (None: plain averaging, or no step yet)
    start: np.ndarray            # the copies' start parameters, in the model's dtype


class _Rule(NamedTuple):
    """How a round's copies make the next model (fit's `averaging`): functions of the state
    only, so that the driver and a worker compute the same bits.

    Block-wise model update filtering with Nesterov block momentum (Chen and Huo 2016): a
    round's copies start from S = W + m D (in the model's dtype); with A their average,
    each copy weighted as _block_weight says, D <- m D + lr (A - S) and W <- W + D. momentum None: plain local SGD, W <- A."""
    momentum: float | None
    learning_rate: float

    def begin(self, weights, buffer, dtype) -> _State | None:
        """The state whose copies start from W + m D; None when that is not finite in
        `dtype`."""
        values = weights if buffer is None else weights + self.momentum * buffer
        with np.errstate(over="ignore"):
            start = values.astype(dtype)
        return _State(weights, buffer, start) if np.isfinite(start).all() else None

    def advance(self, state: _State, parts, rows: float, empty=np.empty) -> _State | None:
        """The state after a round whose blocks' results or partial sums are `parts` (of
        `rows` rows, or weight, in all), in arrays from empty(shape, dtype); None when the new
        parameters would not be finite in the model's dtype. (Summed and stepped in one
        compiled pass: on the workers it lies between two rounds.)"""
        weights = empty(state.weights.shape, state.weights.dtype)
        start = empty(state.start.shape, state.start.dtype)
        buffer = None if self.momentum is None else \
            empty(state.weights.shape, state.weights.dtype)
        nothing = np.empty(0)
        # A state sent to this worker may lie at any byte offset (the compiled pass reads
        # it as aligned vectors; the parts it reads at any offset): copied only then.
        old = [nothing if array is None else np.require(array, None, ["C", "A"])
               for array in (state.weights, state.buffer, state.start)]
        vectors, factors = _terms(parts)
        if len(vectors) == 1 and factors[0] == rows:
            # one block: its parameters are the average, exactly (p * rows / rows may round
            # in float64: a fit of one chunk differed from Trainer.fit in the last bit)
            factors, rows = np.ones(1), 1.0
        finite = _core.averaging_step(
            vectors, factors, float(rows), *old,
            self.momentum or 0.0, self.learning_rate, weights,
            nothing if buffer is None else buffer, start)
        return _State(weights, buffer, start) if finite else None


class _Advanced(NamedTuple):
    """A round's outcome on a worker that averaged it: the state its next blocks start
    from, and what the driver records."""
    state: _State
    report: dict


class _Taken(NamedTuple):
    """What the driver takes from a round: the new parameters in the model's dtype (None
    when not finite, or not asked for), the report, and the whole state when the driver
    keeps a copy (no two workers do)."""
    parameters: np.ndarray | None
    report: dict
    state: _State | None


def _take(advanced: _Advanced, with_state: bool, with_parameters: bool = True) -> _Taken:
    parameters = _parameters(advanced) if with_parameters and advanced.report["finite"] \
        else None
    return _Taken(parameters, advanced.report, advanced.state if with_state else None)


def _parameters(state) -> np.ndarray:
    """The model's parameters in a round's state: a _State, or the _Advanced of a round
    (after one whose parameters were not finite, the round before's, which it kept)."""
    state = _start_state(state)
    return state.weights.astype(state.start.dtype)


def _start_state(start) -> _State:
    """The state a round starts from: start is a _State or the round before's _Advanced."""
    return start.state if isinstance(start, _Advanced) else start


def _advance(rule: _Rule, copies: _Copies, previous, *parts) -> _Advanced:
    """The last sum of a round's partial sums, and the averaging's step from `previous`
    (a _State, or the previous round's _Advanced), into arrays of copies.arrays."""
    state = _start_state(previous)
    report = _tally(parts)
    if not report["weight"]:    # no row of the round weighs anything: nothing moves
        report["finite"] = True
        return _Advanced(state, report)
    new = rule.advance(state, parts, report["weight"], copies.arrays.empty)
    report["finite"] = new is not None
    return _Advanced(state if new is None else new, report)


# ---- the driver ----
def _client_for(client):
    """The distributed client to use: the one given, else the default one, else None
    (dask's local scheduler)."""
    if client is not None:
        from distributed import Client
        if not isinstance(client, Client):
            raise TypeError(f"client must be a dask.distributed.Client (or None: the default "
                            f"client, else dask's local scheduler); got "
                            f"{type(client).__name__}")
        return client
    try:
        from distributed import default_client
    except ImportError:
        return None
    try:
        return default_client()
    except ValueError:
        return None


def _check_one_cluster(client, X, Y) -> None:
    """ValueError where X or Y holds data persisted through a client of another cluster
    than `client`: its scheduler has none of their keys (a KeyError from deep in it, and
    its ERROR logs, before)."""
    if client is None:
        return
    from distributed import futures_of
    for array, name in ((X, "X"), (Y, "Y")):
        for future in futures_of(array):
            theirs = future.client.scheduler.address
            if theirs != client.scheduler.address:
                raise ValueError(f"{name} holds data persisted on another cluster (scheduler "
                                 f"{theirs}) than the client's ({client.scheduler.address}): "
                                 f"pass that cluster's client, or persist {name} on this "
                                 f"one; the model is as it was")


def _check_arrays(model, X, Y, loss):
    for array, name in ((X, "X"), (Y, "Y")):
        if not isinstance(array, da.Array):
            raise TypeError(f"{name} must be a dask array (dask.array.from_array, "
                            f"from_zarr, ...); got {type(array).__name__}")
        if any(math.isnan(size) for size in array.shape):
            raise ValueError(f"{name} has unknown chunk sizes; call "
                             f"{name}.compute_chunk_sizes() first")
        if np.dtype(array.dtype).kind not in "biuf":    # (the chunks are cast unchecked)
            raise TypeError(f"{name} must hold numbers; got a dask array of dtype "
                            f"{array.dtype}")
        # chunks of another array library (pydata's sparse.COO: "Cannot convert a sparse
        # array to dense automatically" from a worker, after the chunks were computed)
        meta = getattr(array, "_meta", None)
        if meta is not None and not isinstance(meta, np.ndarray) and not is_sparse(meta):
            raise TypeError(f"{name}'s chunks are {type(meta).__module__}."
                            f"{type(meta).__name__}; fastbp.dask takes NumPy chunks"
                            f"{' or scipy.sparse matrices' if name == 'X' else ''}")
    if is_sparse(getattr(Y, "_meta", None)):      # (a worker's NumPy said "a sequence")
        raise TypeError(f"Y must be a dask array of dense chunks; got chunks of "
                        f"scipy.sparse {type(Y._meta).__name__} (only X may be sparse)")
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
    float_targets = not targets_are_labels(Y.shape, loss, model.layer_sizes[-1])
    return X, Y, float_targets


def _pairs(X, Y, dtype_name, float_targets, name):
    """One delayed (x, y) pair per non-empty chunk of rows; returns (pairs, the chunks'
    indices, their rows, the keys each pair's data is computed from (_sources))."""
    sizes = X.chunks[0]
    xs, ys = X.to_delayed().ravel(), Y.to_delayed().ravel()
    blocks = [index for index, size in enumerate(sizes) if size > 0]
    pairs = [dask.delayed(_pair, pure=True)(xs[index], ys[index], dtype_name, float_targets,
                                            dask_key_name=f"{name}-data-{index}")
             for index in blocks]
    sources = zip(_sources([xs[index] for index in blocks]),
                  _sources([ys[index] for index in blocks]))
    return pairs, blocks, [int(sizes[index]) for index in blocks], \
        [x | y for x, y in sources]


def _sources(chunks) -> list:
    """For each delayed chunk (of one array), the keys outside its graph that it is
    computed from: the data already in the cluster it reads (a persisted array's chunk is
    itself such a key)."""
    graph = dict(chunks[0].dask) if chunks else {}
    # A task's dependencies name keys inside the graph and outside it (a future's key).
    dependencies = {key: getattr(node, "dependencies", ()) for key, node in graph.items()}
    found = {}
    for chunk in chunks:
        stack = [chunk.key]         # depth first, without recursion (graphs may be deep)
        while stack:
            key = stack[-1]
            if key in found:
                stack.pop()
            elif key not in dependencies:
                found[key] = {key}
                stack.pop()
            else:
                waiting = [dependency for dependency in dependencies[key]
                           if dependency not in found]
                if waiting:
                    stack.extend(waiting)
                else:
                    found[key] = set().union(*(found[dependency]
                                               for dependency in dependencies[key]))
                    stack.pop()
    return [found[chunk.key] for chunk in chunks]


def _held_bytes(client, futures, keys) -> list:
    """Per block, {worker address: bytes of the block's data that worker holds now}, from
    `keys` (each block's keys) among `futures` (the computed data in the cluster's memory,
    e.g. a persisted X's chunks); {} where none of a block's keys is among those finished."""
    from distributed.client import CancelledError
    by_key = {future.key: future for future in futures if future.status == "finished"}
    present = [by_key[key] for block_keys in keys for key in block_keys if key in by_key]
    if not present:
        return [{} for _ in keys]
    try:
        where = client.who_has(present)
        sizes = client.nbytes([future.key for future in present], summary=False)
    except CancelledError:      # lost with a worker since: where things are is unknown
        return [{} for _ in keys]
    held = []
    for block_keys in keys:
        workers = {}
        for key in block_keys:
            for worker in where.get(key, ()):
                workers[worker] = workers.get(worker, 0) + sizes.get(key, 0)
        held.append(workers)
    return held


def placement(rows, worker_threads, held=None) -> list:
    """Which worker trains each block: balanced by rows per thread and, where the balance
    leaves a choice, on a worker that already holds the block's data.

    The balance: blocks by decreasing rows, each to the worker whose rows per thread
    would be fewest once it took the block (ties: the first address in sorted order), so
    that a worker of more threads takes more rows; the largest rows per thread
    that leaves on a worker is the bound. held ({address: bytes} per block, as
    _held_bytes gives): in the same order, each block goes to the worker that holds the
    most of its bytes among those it keeps within the bound (then the fewest rows per
    thread, then the address); kept when every block finds one, else the balance alone.
    Deterministic for the same rows, workers and held bytes. rows: the blocks' rows;
    worker_threads: {address: threads}. Returns one address per block."""
    if not worker_threads:
        raise ValueError("placement needs at least one worker (worker_threads is empty)")
    for worker, threads in worker_threads.items():
        whole_number(threads, f"the threads of worker {worker!r}", 1)
    for block, count in enumerate(rows):
        whole_number(count, f"the rows of block {block}", 0)
    if held is not None:
        if isinstance(held, (dict, str, bytes)) or not hasattr(held, "__len__"):
            raise TypeError(f"held must be a list of one {{address: bytes}} dict per block; "
                            f"got {type(held).__name__}")
        if len(held) != len(rows):
            raise ValueError(f"held has {len(held)} entries; it needs one per block "
                             f"({len(rows)})")
        for block, there in enumerate(held):
            if not isinstance(there, dict):
                raise TypeError(f"held[{block}] must be a dict {{address: bytes}}; got "
                                f"{type(there).__name__}")
            for worker, size in there.items():
                whole_number(size, f"held[{block}][{worker!r}]", 0)
    workers = sorted(worker_threads)
    rank = {worker: index for index, worker in enumerate(workers)}
    order = sorted(range(len(rows)), key=lambda b: (-rows[b], b))

    def assign(choose):
        """Blocks in `order`, each to choose(block, load) (None: no worker): the places
        and the largest rows per thread, or (None, None)."""
        load = dict.fromkeys(workers, 0)
        chosen = [None] * len(rows)
        for block in order:
            worker = choose(block, load)
            if worker is None:
                return None, None
            load[worker] += rows[block]
            chosen[block] = worker
        return chosen, max(load[worker] / worker_threads[worker] for worker in workers)

    def after(block, load, worker):
        return (load[worker] + rows[block]) / worker_threads[worker]

    balanced, bound = assign(lambda block, load: min(
        workers, key=lambda worker: (after(block, load, worker), rank[worker])))
    if not held or not any(held):
        return balanced
    located, _ = assign(lambda block, load: min(
        (worker for worker in workers if after(block, load, worker) <= bound),
        key=lambda worker: (-held[block].get(worker, 0), after(block, load, worker),
                            rank[worker]), default=None))
    return located or balanced


def threads_per_block(places, worker_threads) -> list:
    """BLAS threads for each block: its worker's threads shared by the blocks that worker
    trains at once (a worker of t threads runs up to t tasks together), so a worker never
    runs more BLAS threads than it has threads."""
    counts = {}
    for worker in places:
        counts[worker] = counts.get(worker, 0) + 1
    return [max(1, worker_threads[worker] // min(counts[worker], worker_threads[worker]))
            for worker in places]


class LostDataError(RuntimeError):
    """A chunk's data, or the averaging's state, was lost with workers and cannot be
    recomputed."""


def _lost_data_error(pair_futures, blocks, error, rounds_done):
    lost = [block for future, block in zip(pair_futures, blocks) if future.status != "finished"]
    return LostDataError(
        f"the data of chunk(s) {lost} was lost with a worker and cannot be recomputed: it "
        f"lived only in that worker's memory (placed there with client.scatter, or computed "
        f"from such data). The model holds the parameters of the last completed round "
        f"({rounds_done}). Give fit data the cluster can recompute (read from storage with "
        f"da.from_zarr / read_parquet, generated, or da.from_array of an in-memory array), "
        f"or scatter it again, and call fit again to continue. ({type(error).__name__}: "
        f"{error})")


def _tree(copies, parts, name, call):
    """Sum the blocks' results by a fixed tree of _combine tasks down to at most FAN_IN
    partial sums, which _advance adds last. call(function, *arguments, key=...): makes one
    task (a delayed call or a submitted future); copies: the fit's _Copies (or its
    future)."""
    level = 0
    while len(parts) > FAN_IN:
        parts = [call(_combine, copies, *parts[start:start + FAN_IN],
                      key=f"{name}-sum-{level}-{start // FAN_IN}")
                 for start in range(0, len(parts), FAN_IN)]
        level += 1
    return parts


def fit(model: MLP, trainer: Trainer, X, Y, client=None, rounds=None, epochs_per_round=1,
        validation_data=None, callbacks=None, verbose: int = 0, averaging="block_momentum",
        block_momentum=None, block_learning_rate=1.0, rounds_per_epoch=1) -> History:
    """Train `model` in place on dask arrays X, Y by local SGD with parameter averaging.

    model: a fastbp.MLP; its parameters are the starting point and receive the result
        after every round when validation_data or callbacks read it between rounds, else
        the last completed round's when fit returns (also when it stops early, is
        interrupted or raises; but for a LostDataError that says the state of that round
        was lost with every worker that kept it: then the last round the driver took).
    trainer: a fastbp.Trainer; its loss, optimizer, learning_rate, schedule, batch_size,
        shuffle, seed, weight decay, clipping and class_weight apply to each block's local
        training. Its `epochs` gives the default number of rounds. Its n_threads: the BLAS
        threads of each block; None: the threads of the worker that trains it, shared by
        the blocks that worker trains at once (1 on dask's local scheduler).
    X: dask array (n_samples, n_features), chunked by rows; Y: dask array of targets
        (n_samples, n_outputs), or one class label per row for cross-entropy; Y is rechunked
        to X's row chunks. Each chunk of rows is one local model: choose chunks of at least
        a few batches, and at least as many chunks as the cluster has worker threads.
    client: a dask.distributed.Client; None uses the default client, or dask's local
        scheduler when there is none. On a cluster fastbp places the chunks: balanced by
        rows over the workers (per thread), on the workers that already hold their data
        where the balance allows, re-placed when a worker joins or leaves.
    rounds: rounds of (broadcast, train locally, average); default
        ceil(trainer.epochs / epochs_per_round), or trainer.epochs * rounds_per_epoch.
    epochs_per_round: local epochs each block trains between two averagings.
    rounds_per_epoch: average this many times per pass over the data instead: each
        block's epoch (its rows in a new order each epoch, with shuffle) is cut into this
        many consecutive pieces, one trained per round. More averagings per pass, more
        communication: with many chunks it brings the accuracy per pass close to a single
        process's (docs/dask.md, "Chunks, rounds and accuracy"). Every chunk needs at
        least this many rows; epochs_per_round must then be 1.
    validation_data: (X_val, Y_val) numpy arrays, evaluated on the driver after each round
        (val_loss and the default metrics).
    callbacks: fastbp.callbacks.Callback objects; each round counts as one epoch for them
        (EarlyStopping, ModelCheckpoint, ... work per round). A change a callback makes to
        the model takes effect: the next round starts from the model as it is.
    verbose: 1 prints one line per round.
    averaging: how a round's copies make the next model. "block_momentum" (default): the
        row-weighted average's step from the round's start is added to a momentum buffer,
        the model moves by the buffer, and the next round starts from the model plus
        block_momentum times the buffer (block-wise model update filtering with Nesterov
        momentum, Chen and Huo 2016). "mean": the model is the average (plain local SGD).
    block_momentum: the buffer's decay, in [0, 1); None: 1 - 1/K for K chunks (0 for one
        chunk: each round a Trainer.fit of the chunk, with the block's seed and a fresh
        optimizer state; docs/dask.md says when that is the bits of one Trainer.fit).
    block_learning_rate: the factor on the average's step (> 0). Both are block
        momentum's: with averaging="mean" they are refused.

    Returns a fastbp.History with one entry per round: "loss" (the row-weighted mean of the
    blocks' training loss in their last local epoch; with a {class: weight} class_weight
    the blocks, in it and in the average, weigh their rows' total class weight: one whose
    rows all weigh 0 trains nothing), "learning_rate", "seconds",
    "samples_per_second", and the validation values; `history.placement` lists per round
    {block: Trained(worker address, rows, BLAS threads, seconds training)}. Ctrl-C on the
    driver (also while the chunks are computed) stops after the last completed round and
    returns the history marked interrupted. Settings the schedule or a callback refuses
    are refused before any chunk is computed; a cluster without workers is waited for
    WORKER_WAIT_SECONDS, then refused (TimeoutError). On a cluster each round is
    submitted before the one before it ends (docs/dask.md, "Rounds are pipelined"), and
    submitted again when what it was submitted with has changed, with the same result. The blocks' seeds are
    derived from trainer.seed, the round and the block's index, and the average is summed
    in a fixed order, so a run is reproducible for a given seed, chunking and thread count,
    whichever workers run the tasks (and when a task is re-run after a worker is lost).
    """
    if not isinstance(model, MLP):
        raise TypeError(f"model must be a fastbp.MLP; got {type(model).__name__}")
    if not isinstance(trainer, Trainer):
        raise TypeError(f"trainer must be a fastbp.Trainer; got {type(trainer).__name__}")
    spec = trainer.spec()
    spec.check_model(model)      # here, not only in each block's fit on the workers
    loss = spec.loss
    check_verbose(verbose)
    epochs_per_round = whole_number(epochs_per_round, "epochs_per_round", 1)
    rounds_per_epoch = whole_number(rounds_per_epoch, "rounds_per_epoch", 1)
    if epochs_per_round > 1 and rounds_per_epoch > 1:
        raise ValueError(f"epochs_per_round ({epochs_per_round}) and rounds_per_epoch "
                         f"({rounds_per_epoch}) cannot both be above 1: a round trains "
                         f"several epochs or a piece of one")
    if rounds is None:
        rounds = spec.epochs * rounds_per_epoch if rounds_per_epoch > 1 else \
            -(-spec.epochs // epochs_per_round)
    rounds = whole_number(rounds, "rounds", 0)
    if averaging not in AVERAGING:
        raise ValueError(f"averaging must be one of {', '.join(map(repr, AVERAGING))}; "
                         f"got {averaging!r}")
    if block_momentum is not None:
        block_momentum = real_number(block_momentum, "block_momentum")
        if not 0 <= block_momentum < 1:
            raise ValueError(f"block_momentum must be in [0, 1); got {block_momentum!r}")
    block_learning_rate = real_number(block_learning_rate, "block_learning_rate")
    if not block_learning_rate > 0:
        raise ValueError(f"block_learning_rate must be > 0; got {block_learning_rate!r}")
    if averaging == "mean" and (block_momentum is not None or block_learning_rate != 1.0):
        raise ValueError("block_momentum and block_learning_rate are block momentum's; "
                         "averaging='mean' takes neither")
    callbacks = checked_callbacks(callbacks)
    validation, metric_functions = None, []
    if validation_data is not None:
        validation = validation_set(model, loss, validation_data)
        metric_functions = chosen_metrics(None, loss, model.layer_sizes[-1])
    X, Y, float_targets = _check_arrays(model, X, Y, loss)
    class_table = None
    if trainer.class_weight is not None:
        # (a loss without classes refused here, before any chunk is computed, for
        # "balanced" too; a dict's table kept: chunks of weight 0 train nothing)
        n_classes = loss.n_classes(model.layer_sizes[-1])
    if isinstance(trainer.class_weight, dict):
        class_table = class_weight_table(trainer.class_weight, n_classes)
        if not class_table.any():
            raise ValueError(f"class_weight {trainer.class_weight!r} weighs every class 0: "
                             f"there is nothing to train on")
    client = _client_for(client)
    _check_one_cluster(client, X, Y)
    entropy = trainer.seed if trainer.seed is not None else \
        int(np.random.SeedSequence().generate_state(1, np.uint64)[0])
    name = f"{TASK_PREFIX}-{uuid.uuid4().hex[:12]}"
    arguments = trainer.arguments()
    pairs, blocks, rows, chunk_keys = _pairs(X, Y, model.dtype.name, float_targets, name)
    if min(rows) < rounds_per_epoch:
        raise ValueError(f"rounds_per_epoch={rounds_per_epoch} cuts each chunk's epoch into "
                         f"that many pieces, but a chunk has only {min(rows)} rows; use "
                         f"fewer rounds per epoch or larger chunks")
    rule = _Rule(None, 1.0) if averaging == "mean" else _Rule(
        1.0 - 1.0 / len(blocks) if block_momentum is None else block_momentum,
        block_learning_rate)
    averager = _Averager(rule, model)
    copies = _Copies(model.to_bytes())    # the blocks' copies of the model as it began
    history = History(n_samples=int(X.shape[0]))
    history.placement = []

    def round_inputs(round_index):
        """The blocks' seeds and pieces of their chunks in one round."""
        seeds = [_block_seed(entropy, round_index, block) for block in blocks]
        pieces = [None] * len(blocks) if rounds_per_epoch == 1 else [
            Piece(_order_seed(entropy, round_index // rounds_per_epoch, block)
                  if trainer.shuffle else None, round_index % rounds_per_epoch,
                  rounds_per_epoch) for block in blocks]
        return seeds, pieces

    cluster = local = None
    threads = [trainer.n_threads or 1] * len(blocks)     # (dask's local scheduler)

    @contextlib.contextmanager
    def loaded():
        """The chunks computed where they train: after the schedule and the callbacks have
        accepted the fit (on_train_begin), inside the fit's handling of Ctrl-C and its
        clean-up."""
        nonlocal cluster, local
        if client is not None:
            # The driver takes each round's parameters only when something reads the model
            # between rounds (validation, callbacks); else the last round's once, at the
            # end: on a machine whose cores all train, the driver's share of a round slows
            # them.
            cluster = _ClusterRounds(client, pairs, blocks, rows, trainer.n_threads, rule,
                                     name, arguments, round_inputs, copies,
                                     _held_bytes(client, client.futures_of([X, Y]),
                                                 chunk_keys),
                                     parameters_each_round=validation is not None or
                                     bool(callbacks))
        else:    # dask's local scheduler: every block on its own thread of one process
            local = list(dask.persist(*pairs, scheduler="threads"))
        if class_table is not None and not class_table.all():
            weights = cluster.chunk_weights() if cluster is not None else dask.compute(
                *[dask.delayed(_chunk_weight, pure=False)(copies, arguments, pair)
                  for pair in local], scheduler="threads")
            if not any(weights):
                raise ValueError(f"every chunk's rows weigh 0 under class_weight "
                                 f"{trainer.class_weight!r} (each chunk holds only classes "
                                 f"of weight 0): there is nothing to train on")
        yield

    def local_round(round_index, rates):
        state = averager.start()
        seeds, pieces = round_inputs(round_index)
        start = dask.delayed(state, name=f"{name}-start-{round_index}", traverse=False)
        results = [dask.delayed(_train_block, pure=False)(
                       copies, start, arguments, pair, seed, rates, n_threads, block,
                       piece, dask_key_name=f"{name}-r{round_index}-b{block}")
                   for pair, seed, n_threads, block, piece in zip(
                       local, seeds, threads, blocks, pieces)]
        top = _tree(copies, results, f"{name}-r{round_index}",
                    lambda function, *args, key: dask.delayed(function, pure=False)(
                        *args, dask_key_name=key))
        return _take(_advance(rule, copies, state, *dask.compute(*top, scheduler="threads")),
                     True)

    def train_round(round_index, rates):
        """One round: train every block from the current start, average (an EpochLoop
        step)."""
        started = time.perf_counter()
        try:
            if client is not None:
                next_rates = None
                if round_index + 1 < rounds:
                    try:
                        next_rates = loop.step_rates(round_index + 1)[1]
                    except Exception:
                        # (a schedule's error for the next round: raised when that round
                        # asks again, after this one, as on the local scheduler)
                        next_rates = None
                taken = cluster.round(round_index, rates, averager, next_rates,
                                      history.epochs)
            else:
                taken = local_round(round_index, rates)
        except KeyboardInterrupt:      # Ctrl-C: the model keeps the last completed round
            return EpochResult(interrupted=True)
        # Not expected (blocks roll their divergence back), but the model must stay finite.
        if not averager.accept(taken):
            warnings.warn(f"round {round_index + 1}: the averaged parameters are not "
                          f"finite; the model keeps those of the previous round",
                          RuntimeWarning, stacklevel=4)
            return EpochResult(diverged=True)
        report = taken.report
        history.placement.append(dict(sorted(report["trained"].items())))
        if report["diverged"]:
            warnings.warn(f"round {round_index + 1}: the loss diverged on some blocks "
                          f"(their last epoch was rolled back); training stops. Try a "
                          f"smaller learning_rate.", RuntimeWarning, stacklevel=4)
        # (a round whose rows all weigh 0, class_weight's pieces: no loss, nothing moved)
        loss = report["loss"] / report["weight"] if report["weight"] else float("nan")
        return EpochResult(loss, time.perf_counter() - started,
                           report["rows"] * epochs_per_round, diverged=report["diverged"])

    def report_line(round_index, logs):
        shown = "  ".join(f"{key} {value:.4g}" for key, value in logs.items()
                          if key not in ("learning_rate", "samples_per_second"))
        print(f"round {round_index + 1}/{rounds}  {shown}", flush=True)

    loop = EpochLoop(model, loss, spec.schedule, spec.optimizer.learning_rate, callbacks,
                     history, validation, metric_functions, spec.max_time,
                     epochs_per_step=epochs_per_round,
                     report=report_line if verbose else None,
                     steps_per_epoch=rounds_per_epoch,
                     validation_source="validation_data in fastbp.dask.fit")
    try:
        return loop.run(rounds, 0, train_round, context=loaded)
    except KeyboardInterrupt:     # outside a round (loading the chunks, validation, a
        history.interrupted = True          # callback): as Trainer.fit
        return history
    finally:
        if cluster is not None:
            try:
                # SIGINT held back until both are done: a Ctrl-C (a second one) in the
                # fetch raised out of fit and left the model at its start, whatever rounds
                # had completed; then it marks the history interrupted, as Trainer.fit's
                _core.deferred(_finish, cluster, averager)
            except KeyboardInterrupt:
                history.interrupted = True


def _finish(cluster, averager) -> None:
    """A fit's end on a cluster: the model at the last completed round, however the fit
    ends, then what the fit put on the cluster let go of (the blocks' copies on the
    workers, a round ahead)."""
    try:
        averager.catch_up(lambda: cluster.latest_parameters(averager))
    finally:
        cluster.release()


AVERAGING = ("block_momentum", "mean")


class _Averager:
    """The driver's side of the averaging: the model holds the last completed round's W,
    rounded to its dtype, and `state` is the driver's copy of that round's whole state
    (None on a cluster whose workers keep it). A callback may change the model between
    rounds; the next round then starts from the model as it is (W <- the model's
    parameters; block momentum's buffer kept)."""

    def __init__(self, rule: _Rule, model: MLP):
        self.rule, self.model = rule, model
        self.held = model._params.copy()     # what the model held after the last round
        self.state = rule.begin(model.parameter_vector(np.float64), None, model.dtype)
        if self.state is None:
            raise ValueError("the model's parameters are not all finite (NaN or infinity): "
                             "there is no start to train from")
        self.completed = 0      # rounds completed
        self.in_model = 0       # the round whose parameters the model holds (0: the start)

    def changed(self) -> bool:
        return not np.array_equal(self.model._params, self.held)

    def start(self) -> _State:
        """The state the next round starts from (made from `state`, which must be known)."""
        if self.changed():
            state = self.rule.begin(self.model.parameter_vector(np.float64),
                                    self.state.buffer, self.model.dtype)
            if state is None:
                raise ValueError(f"the next round's start (the model plus block_momentum "
                                 f"times its buffer) is not finite in {self.model.dtype}: "
                                 f"the model was changed between rounds")
            self.state = state
            np.copyto(self.held, self.model._params)
        return self.state

    def accept(self, taken: _Taken) -> bool:
        """Take a round's outcome; False: its parameters were not finite, and the model
        keeps the last round's. A round taken without its parameters leaves the model
        behind until catch_up."""
        if not taken.report["finite"]:
            return False
        self.state = taken.state
        self.completed += 1
        if taken.parameters is not None:
            self._hold(taken.parameters)
        return True

    def _hold(self, parameters: np.ndarray) -> None:
        self.model.set_parameter_vector(parameters)
        np.copyto(self.held, self.model._params)
        self.in_model = self.completed

    def catch_up(self, fetch) -> None:
        """Write the last completed round's parameters into the model if it holds an
        earlier round's: from the driver's copy of the state, else fetch() (a worker's)."""
        if self.in_model != self.completed:
            self._hold(_parameters(self.state) if self.state is not None else fetch())


class _Submitted(NamedTuple):
    """One round's tasks on a cluster, and what they were submitted with."""
    round_index: int
    rates: list
    workers: dict
    advanced: dict       # {worker: the future of its _Advanced there}: where the next
                         # round's blocks on that worker start from
    taken: object        # the future of the _Taken the driver waits for
    futures: list        # every future of this round


def _scattered(client, value):
    """A future of `value` on every worker (client.scatter, broadcast), scattered again once
    where a worker died while it was sent: a stream to it closed mid-scatter raised
    CommClosedError out of fit (a worker killed as a fit began), where a worker lost later
    is a round run again."""
    from distributed.comm.core import CommClosedError
    for attempt in range(2):
        try:
            return client.scatter([value], broadcast=True, hash=False)[0]
        except CommClosedError:
            if attempt:
                raise


class _ClusterRounds:
    """The rounds on a distributed cluster: the chunks persisted on the workers fastbp
    chose (balanced by rows, on the workers that hold their data where the balance
    allows: held), each round's tasks pinned there, re-placed when the workers change.

    Pipelined: while the driver waits for round r, round r + 1 is already submitted, to
    start from r's state on each worker that trained r (each averages r itself; nothing
    goes through the driver), with the learning rates the schedule gives before r ends.
    The driver keeps it when nothing it was submitted with has changed by the time its
    turn comes (the rates, the workers, the model: a schedule or a callback may change
    them); otherwise, and when the state it starts from was lost with a worker, the round
    is submitted again from a copy of the state the driver fetches from a worker that
    kept one. Either way each round computes the same bits."""

    def __init__(self, client, pairs, blocks, rows, n_threads, rule, name, arguments,
                 round_inputs, copies, held, parameters_each_round):
        self.client, self.blocks, self.rows = client, blocks, rows
        self.parameters_each_round = parameters_each_round
        # A worker first: nothing is put on the cluster before there is one to hold it.
        if not client.nthreads():
            try:
                client.wait_for_workers(1, timeout=WORKER_WAIT_SECONDS)
            except TimeoutError:
                raise TimeoutError(f"the cluster has no worker, and none joined within "
                                   f"{WORKER_WAIT_SECONDS} s (fastbp.dask."
                                   f"WORKER_WAIT_SECONDS); start workers (e.g. "
                                   f"cluster.scale(n)) and call fit again: the model is "
                                   f"as it was") from None
        self.workers = client.nthreads()
        self._copies = copies
        self.copies = _scattered(client, copies)
        self.n_threads, self.rule, self.name = n_threads, rule, name
        self.arguments, self.round_inputs = arguments, round_inputs
        self.submitted = 0      # submissions so far (each gets its own task keys)
        self.ahead = None       # the next round, submitted ahead
        self.kept = []          # the last completed round's _Advanced futures: its state
        self.places = placement(rows, self.workers, held)
        self.pairs, self.futures, self.computed_on = pairs, [None] * len(pairs), \
            [None] * len(pairs)
        self._persist(range(len(pairs)))

    def _persist(self, indices):
        """Compute the chunks `indices` where their places are."""
        for worker in sorted({self.places[i] for i in indices}):
            mine = [i for i in indices if self.places[i] == worker]
            persisted = self.client.compute([self.pairs[i] for i in mine], workers=[worker],
                                            allow_other_workers=True)
            for i, future in zip(mine, persisted):
                self.futures[i], self.computed_on[i] = future, worker

    def chunk_weights(self) -> list:
        """Each chunk's total class weight (_chunk_weight), computed where it trains."""
        weights = [self.client.submit(_chunk_weight, self.copies, self.arguments, future,
                                      workers=[worker], allow_other_workers=True, pure=False)
                   for future, worker in zip(self.futures, self.places)]
        try:
            return self.client.gather(weights)
        finally:
            self._forget(weights)

    def _persist_stranded(self):
        """Compute again, on the workers there are now, the chunks lost with the workers
        they were computed on. (The scheduler recomputes a lost chunk on another worker
        itself while one is left; when none is, its tasks wait for a worker their places
        name, which a restarted worker, at a new address, is not, though they allow
        others.)"""
        if not self.client.nthreads():
            try:
                self.client.wait_for_workers(1, timeout=WORKER_WAIT_SECONDS)
            except TimeoutError:
                raise LostDataError(f"every worker of the cluster was lost and none came "
                                    f"back within {WORKER_WAIT_SECONDS} s; start workers "
                                    f"and call fit again to continue") from None
        alive = self.client.nthreads()
        stranded = [i for i, future in enumerate(self.futures)
                    if future.status != "finished" and self.computed_on[i] not in alive]
        self._replace_if_workers_changed()
        if stranded:
            # (a cancel, not a release: the stuck tasks' keys are computed again at once,
            # without the places that named a worker gone)
            self.client.cancel([self.futures[i] for i in stranded])
            self._persist(stranded)

    def _replace_if_workers_changed(self):
        workers = self.client.nthreads()
        if workers and workers != self.workers:
            # New places (the chunks stay where they are where the balance allows): a
            # block's chunk moves to its new worker once, with its first task.
            held = _held_bytes(self.client, self.futures,
                               [[future.key] for future in self.futures])
            self.workers, self.places = workers, placement(self.rows, workers, held)

    def round(self, round_index, rates, averager, next_rates, rounds_done) -> _Taken:
        """Run round `round_index` and return its outcome; next_rates: the schedule's rates
        for the round after it (None: it is the last), submitted before this one ends."""
        from distributed.client import CancelledError
        current, self.ahead = self.ahead, None
        self._replace_if_workers_changed()
        if current is not None and (current.round_index != round_index or
                                    current.rates != list(rates) or
                                    current.workers != self.workers or averager.changed()):
            self._let_go(current)
            current = None
        try:
            for attempt in range(2):
                if current is None:
                    if attempt:       # a worker was lost: the chunks' places again
                        self._persist_stranded()
                        if self.copies.status != "finished":  # every worker holding it died
                            self.copies = _scattered(self.client, self._copies)
                    current = self._submit(round_index, rates,
                                           state=self._driver_state(averager, rounds_done))
                if next_rates is not None:
                    self.ahead = self._submit(round_index + 1, next_rates, after=current)
                try:
                    taken = current.taken.result()
                    self.kept = list(current.advanced.values())
                    return taken
                except CancelledError as error:
                    # A chunk recomputed after its worker left is "pending" meanwhile;
                    # one that cannot be is cancelled (or still missing on the second try).
                    statuses = {future.status for future in self.futures}
                    if "cancelled" in statuses or (attempt and statuses - {"finished"}):
                        raise _lost_data_error(self.futures, self.blocks, error,
                                               rounds_done) from error
                    if attempt:     # a worker lost again while the round ran again
                        raise LostDataError(
                            f"round {round_index + 1} was lost with a worker twice (another "
                            f"left while it ran again); the model holds the parameters of "
                            f"the last completed round ({rounds_done}): call fit again "
                            f"to continue once the cluster is steady ({type(error).__name__}"
                            f": {error})") from error
                    # The state this round starts from (on the workers that trained the
                    # last round) was lost with a worker: again, from a copy that is not.
                    self._let_go(current, self.ahead)
                    current = self.ahead = None
        except BaseException:
            # (Ctrl-C, a block's error, lost data): this round's tasks and the next's go;
            # a future holding an error is kept alive by its own traceback otherwise
            self._let_go(current, self.ahead)
            current = self.ahead = None
            raise

    def _driver_state(self, averager, rounds_done) -> _State:
        """The state to submit a round from, made on the driver: its copy of the last
        completed round's state, fetched from a worker that keeps one when it has none."""
        if averager.state is None:
            averager.state = self._from_kept(lambda future: future.result().state,
                                             averager, rounds_done)
        return averager.start()

    def latest_parameters(self, averager) -> np.ndarray:
        """The model's parameters after the last completed round, made where a copy of
        its state lives (the driver fetches them only when something reads the model
        between rounds: fit's parameters_each_round)."""
        def read(kept):
            parameters = self.client.submit(_parameters, kept, pure=False)
            try:
                return parameters.result()
            finally:
                self._forget([parameters])

        return self._from_kept(read, averager, averager.completed)

    def _from_kept(self, read, averager, rounds_done):
        """read(future) of a worker's copy of the last completed round's _Advanced, from
        the first that is not lost."""
        from distributed.client import CancelledError
        for future in sorted(self.kept, key=lambda future: future.status != "finished"):
            try:
                return read(future)
            except CancelledError:     # lost with its worker: another has a copy
                self._forget([future])
                continue
        raise LostDataError(
            f"the averaging's state after round {rounds_done} was lost with the workers "
            f"that kept it; the model holds the parameters of round {averager.in_model} "
            f"(0: those it began with): call fit again to continue (block momentum's "
            f"buffer starts afresh)")

    def _submit(self, round_index, rates, state=None, after=None) -> _Submitted:
        """Submit one round, starting from `state` (made on the driver) or from where the
        round `after` (submitted) is averaged, on the places round() last saw."""
        client = self.client
        key = f"{self.name}-s{self.submitted}-r{round_index}"
        self.submitted += 1
        threads = [self.n_threads] * len(self.blocks) if self.n_threads is not None \
            else threads_per_block(self.places, self.workers)
        # Every worker that trains a block averages the round itself (the same bits on
        # each), so that its blocks of the next round start there without another hop.
        workers = sorted(set(self.places))
        if after is None:
            scattered = _scattered(client, state)
            previous, own = dict.fromkeys(workers, scattered), [scattered]
        else:      # (a worker that joined since starts from another worker's copy)
            anywhere = next(iter(after.advanced.values()))
            previous, own = {worker: after.advanced.get(worker, anywhere)
                             for worker in workers}, []
        seeds, pieces = self.round_inputs(round_index)
        parts = [client.submit(_train_block, self.copies, previous[worker],
                               self.arguments, pair, seed, rates, n_threads, block, piece,
                               key=f"{key}-b{block}",
                               workers=[worker], allow_other_workers=True, pure=False)
                 for pair, seed, n_threads, block, worker, piece in zip(
                     self.futures, seeds, threads, self.blocks, self.places, pieces)]
        top = _tree(self.copies, parts, key, lambda function, *args, key: client.submit(
            function, *args, key=key, pure=False))
        advanced = {worker: client.submit(_advance, self.rule, self.copies,
                                          previous[worker], *top,
                                          key=f"{key}-advance-{index}", workers=[worker],
                                          allow_other_workers=True, pure=False)
                    for index, worker in enumerate(workers)}
        # Taken ahead of the next round's block on its worker (one thread: else after it).
        # The driver keeps a copy of the state only when no two workers do.
        taken = client.submit(_take, advanced[workers[0]], len(workers) < 2,
                              self.parameters_each_round,
                              key=f"{key}-take", priority=1, pure=False)
        return _Submitted(round_index, list(rates), dict(self.workers), advanced, taken,
                          [*own, *parts, *top, *advanced.values(), taken])

    def _let_go(self, *rounds):
        self._forget([future for submitted in rounds if submitted is not None
                      for future in submitted.futures])

    def _forget(self, futures):
        """Let go of `futures`, each by its release(): the client no longer wants them, and
        the scheduler forgets each once no task that is still wanted needs it (one that has
        started finishes on its worker, its result dropped; one that has not is not run).
        Dropping the references is not enough: a future that raised (an error, or cancelled
        by the scheduler: lost with its workers) keeps the error, whose traceback holds the
        frames that held the future, so the client would keep it as long as it lives;
        release() lets go of it whoever holds it. Not client.cancel: a cancel goes on to
        the tasks that depend on the futures, and after a lost worker some of those (of
        rounds submitted again) were wanted by no one, which failed the scheduler's
        `assert ts.who_wants` and dropped the client, the user's futures with it (about one
        kill in twenty in a review)."""
        for future in futures:
            future.release()

    def release(self):
        """Let go of the round submitted ahead (a fit that stops early; a task already
        running finishes on its worker, its result dropped) and of everything else the fit
        put on the cluster: the chunks, the model's copies, the last round's state.

        The driver has a round's result from one worker's averaging; another's may still
        run, reading the round's blocks and the round before's state, which the driver has
        let go of: those stay on the scheduler, wanted by no one, until it ends. A cancel
        of what they depend on (the chunks, the copies) meanwhile failed an assertion in
        the scheduler, which then dropped the client and every future of the user's with
        it: so the averaging is waited for first (AVERAGING_WAIT_SECONDS at most), and
        what is let go of is released, not cancelled (_forget)."""
        import distributed
        from distributed.client import CancelledError
        self._let_go(self.ahead)
        try:
            distributed.wait(self.kept, timeout=AVERAGING_WAIT_SECONDS)
        except (TimeoutError, CancelledError):    # (lost or stuck: its tasks go with it)
            pass
        self._forget([*self.kept, *(future for future in self.futures if future is not None),
                      self.copies])
        self.ahead = None
        self.futures = self.copies = self.kept = []
