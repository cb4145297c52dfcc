"""scikit-learn estimators trained by fastbp: `MLPClassifier` and `MLPRegressor`.

They take scikit-learn's parameter names and behave as `sklearn.neural_network`'s
estimators do (fitted attributes, stopping rule, warm_start, partial_fit), but train in
fastbp's compiled loop: one `fastbp.Trainer.fit` call per `fit`, with a callback that
applies scikit-learn's stopping rule between epochs; solver='lbfgs' runs scipy's L-BFGS-B
on the compiled full-batch loss and gradient (MLP.gradients). docs/sklearn.md maps every parameter.

Needs scikit-learn (`pip install "fastbp[sklearn]"`); `import fastbp` does not import it.
"""
from __future__ import annotations

import contextlib
import numbers
import os
import re
import sys
import threading
import warnings

import numpy as np
import scipy.optimize

try:
    import sklearn
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import LabelBinarizer
    from sklearn.utils import assert_all_finite, check_random_state
    try:        # scikit-learn's own error for a bad parameter: both ValueError and TypeError
        from sklearn.utils._param_validation import InvalidParameterError
    except ImportError:                                 # scikit-learn before 1.2
        InvalidParameterError = ValueError
    from sklearn.utils.metaestimators import available_if
    from sklearn.utils.multiclass import check_classification_targets, type_of_target, \
        unique_labels
    from sklearn.utils.validation import _check_sample_weight, check_array, check_is_fitted, \
        column_or_1d, validate_data
except ImportError as error:          # pragma: no cover (tested in a subprocess)
    raise ImportError('fastbp.sklearn needs scikit-learn >= 1.6: pip install "fastbp[sklearn]"'
                      ) from error

from fastbp import _core, losses, optimizers, schedules
from fastbp._threads import MAX_THREADS
from fastbp.callbacks import Callback
from fastbp.model import ACTIVATIONS, INITS, MLP
from fastbp._validation import (as_row_weights, as_sparse_rows, check_unmasked, checked_csr,
                                is_sparse, named_setting)
from fastbp.trainer import Trainer, check_numbers_in_dtype

if tuple(int(part) for part in re.findall(r"\d+", sklearn.__version__)[:2]) < (1, 6):
    raise ImportError(f'fastbp.sklearn needs scikit-learn >= 1.6 (found {sklearn.__version__}): '
                      f'pip install -U "fastbp[sklearn]"')

__all__ = ["MLPClassifier", "MLPRegressor"]

# lbfgs (full batch, scipy's L-BFGS-B), then the stochastic ones: sgd, adam, rmsprop, adagrad
STOCHASTIC_SOLVERS = optimizers.REGISTRY.canonical_names
SOLVERS = ("lbfgs",) + tuple(STOCHASTIC_SOLVERS)
LEARNING_RATES = ("constant", "invscaling", "adaptive")
# Hidden activations: fastbp's, plus scikit-learn's name for the sigmoid.
HIDDEN_ACTIVATIONS = ("logistic",) + tuple(a for a in ACTIVATIONS if a != "softmax")
_FASTBP_ACTIVATION = {"logistic": "sigmoid"}


def _squared_error(dtype):
    """Half the squared error, scikit-learn's squared loss: exactly fastbp's Huber loss with
    a delta that no finite difference in the model's dtype exceeds, its largest number
    (float32's capped a float64 model's errors past 3.4e38: a linear loss there)."""
    return losses.Huber(delta=float(np.finfo(dtype).max))


# scikit-learn's names for losses fastbp knows by other names (or builds), each made for
# the model's dtype, then fastbp's own regression losses.
_SCIKIT_LEARN_LOSSES = {"squared_error": _squared_error,
                        "absolute_error": lambda dtype: losses.MeanAbsoluteError()}
REGRESSION_LOSSES = tuple(_SCIKIT_LEARN_LOSSES) + tuple(
    name for name in losses.REGISTRY.canonical_names if not losses.get(name).is_classification)
_SEED_LIMIT = 2**31 - 1
# The estimator's parameter behind each number the trainer checks in the model's dtype
_PARAMETER_OF = {"learning_rate": "learning_rate_init", "momentum": "momentum",
                 "beta1": "beta_1", "beta2": "beta_2", "epsilon": "epsilon",
                 "weight_decay": "alpha", "delta": "loss"}
# init: scikit-learn's (the default), or one of fastbp.MLP's
ESTIMATOR_INITS = ("sklearn",) + tuple(INITS)
_MIN_ADAPTIVE_RATE = 1e-6     # scikit-learn's: 'adaptive' stops once the rate is this low


def _parameter_error(estimator, name, expected, value):
    return InvalidParameterError(f"The {name!r} parameter of {type(estimator).__name__} must "
                                 f"be {expected}. Got {value!r} instead.")


def _is_bool(value) -> bool:
    return isinstance(value, (bool, np.bool_))


# (Python's int and float answered first: the abstract classes' checks cost about a
# microsecond each, and a fit checks a few dozen parameters.)
def _is_real(value) -> bool:
    return type(value) in (int, float) or (isinstance(value, numbers.Real)
                                           and not _is_bool(value))


def _is_whole(value) -> bool:
    return type(value) is int or (isinstance(value, numbers.Integral) and not _is_bool(value))


def _sparse_of_rows(X) -> bool:
    """Whether X is a scipy.sparse matrix or array of at least one row and column, whose
    index arrays fastbp checks before validate_data converts it (other shapes get
    validate_data's own messages)."""
    return is_sparse(X) and len(X.shape) == 2 and X.shape[0] > 0 and X.shape[1] > 0


class _ScikitLearnRate(schedules.Schedule):
    """scikit-learn's SGD learning rates, as a fastbp schedule (evaluated once per epoch):
    the base rate times `factor`, which the estimator sets after each epoch.

    'invscaling': factor 1 / (t + 1) ** power_t, t the samples seen before the epoch (the
    first epoch of each fit uses factor 1); 'adaptive': factor 1, divided by 5 each time the
    stopping rule fires.
    """

    def __init__(self, mode: str, power_t: float):
        self.mode = mode
        self.power_t = power_t
        self.factor = 1.0

    def _rate(self, epoch, base):
        return base * self.factor

    def _arguments(self):
        return {"mode": self.mode, "power_t": self.power_t}


class _L2TermCheck:
    """The trainer's check after each epoch (Trainer._epoch_check) where the loss has an
    L2 term: weights grown past what the sum of their squares holds make the loss
    scikit-learn reports infinite, which the core's own check (the data's loss and the
    parameters) does not see; that epoch is undone as a diverged one (_check_ending
    says so). The term it computed is the epoch's record's (take): each is a pass over
    every weight (about 10 ms on S1's 100000-256 layer: a 64-row partial_fit took 53-55 ms
    with both, 43 with one)."""

    def __init__(self, estimator):
        self.estimator = estimator
        self.failed = False
        self.term = None

    def __call__(self, model) -> bool:
        term = self.estimator._l2_term()
        self.failed = not np.isfinite(term)
        self.term = None if self.failed else term
        return not self.failed

    def take(self):
        """The term of the epoch last checked, once (None: none kept)."""
        term, self.term = self.term, None
        return term


class _ScikitLearnRule(Callback):
    """Runs between epochs of the estimator's one Trainer.fit call: records the epoch as
    scikit-learn does, applies its stopping rule, and restores the best parameters after an
    early-stopped fit."""

    def __init__(self, estimator, n_train: int, l2_check=None):
        self.estimator = estimator
        self.n_train = n_train
        self.l2_check = l2_check
        self.stopped = False

    def on_epoch_end(self, epoch, logs):
        if self.estimator._end_of_epoch(logs, self.n_train, self.l2_check):
            self.stopped = True
            return True
        return None

    def on_train_end(self, logs=None):
        self.estimator._restore_best()


def _sklearn_initial_parameters(layer_sizes, factor_activations, rng) -> np.ndarray:
    """scikit-learn's initial parameters, drawn from `rng` as its MLP draws them (so the same
    random_state gives the same start): for each layer, the weights and then the biases
    uniform in +-sqrt(factor / (fan_in + fan_out)), factor 2 where the layer's entry of
    `factor_activations` is the logistic sigmoid, else 6. Returned in
    MLP.parameter_vector's order."""
    parts = []
    for activation, fan_in, fan_out in zip(factor_activations, layer_sizes[:-1],
                                           layer_sizes[1:]):
        bound = np.sqrt((2.0 if activation == "sigmoid" else 6.0) / (fan_in + fan_out))
        parts.append(rng.uniform(-bound, bound, (fan_in, fan_out)).ravel())
        parts.append(rng.uniform(-bound, bound, fan_out))
    return np.concatenate(parts)


def _stochastic_solver(estimator) -> bool:
    """partial_fit exists for the stochastic solvers only, as in scikit-learn."""
    if estimator.solver == "lbfgs":
        raise AttributeError(f"partial_fit is only available for stochastic optimizers; "
                             f"{estimator.solver!r} is not stochastic.")
    return True


class _LbfgsObjective:
    """scikit-learn's full-batch objective and its gradient for a flat float64 parameter
    vector (MLP.parameter_vector's order), from the compiled gradients pass: one pass over
    the data per evaluation, the loss the sample weights' weighted mean. The data are
    checked and the pass planned once (MLP._gradient_pass), not at every evaluation: on
    scikit-learn's small data sets those checks had cost twice the pass itself.
    """

    def __init__(self, estimator, X, Y, sample_weight):
        self.model = model = estimator.model_
        self.scale = estimator._objective_scale()
        self.reported_scale = estimator._reported_scale()
        if Y.ndim == 1:                      # class indices: one-hot once, not per call
            Y = np.eye(model.layer_sizes[-1], dtype=model.dtype)[Y]
        self.X, self.Y, self.loss = X, Y, estimator._loss()
        total = X.shape[0] if sample_weight is None else float(sample_weight.sum())
        self.run = model._gradient_pass(X, Y, self.loss, estimator.n_threads, sample_weight,
                                        repeated=True)
        self.grads = np.empty(model.n_params, dtype=model.dtype)
        # alpha / 2 * sum ||W||^2 / total weight, on the weights' entries of the vector
        self.penalty = 0.5 * float(estimator.alpha) / total
        self.weight_slices = []
        offset = 0
        for n_in, n_out in zip(model.layer_sizes[:-1], model.layer_sizes[1:]):
            self.weight_slices.append(slice(offset, offset + n_in * n_out))
            offset += n_in * n_out + n_out

    def _mean_loss_and_gradient(self, theta):
        """(mean loss, its gradient as a new float64 vector) at theta."""
        self.model.set_parameter_vector(theta)
        loss = self.run(self.grads)
        return loss, self.grads.astype(np.float64)   # a copy: scipy may keep it

    def _penalty_term(self, theta):
        return self.penalty * sum(float(np.dot(theta[part], theta[part]))
                                  for part in self.weight_slices)

    def __call__(self, theta):
        try:
            value, gradient = self._mean_loss_and_gradient(theta)
        except ValueError:
            # a point the model's dtype cannot hold: tell L-BFGS to step back
            return np.inf, np.zeros_like(theta)
        if not (np.isfinite(value) and _core.all_finite(gradient.reshape(1, -1))):
            return np.inf, np.zeros_like(theta)
        value = self.scale * value + self._penalty_term(theta)
        gradient *= self.scale
        for part in self.weight_slices:
            gradient[part] += 2.0 * self.penalty * theta[part]
        return value, gradient

    def reported_loss(self, theta) -> float:
        """loss_ as scikit-learn reports it at theta (its reporting scale); NaN where the
        model cannot be evaluated there."""
        try:
            value, _ = self._mean_loss_and_gradient(theta)
        except ValueError:
            return np.nan
        return self.reported_scale * value + self._penalty_term(theta)


class _LiveLayers(list):
    """coefs_ or intercepts_: the model's live arrays, one a layer, in a list in which
    assigning an item (coefs_[0] = W) writes the new values into that layer, as it replaces
    the layer in scikit-learn's plain list (checked as model.weights = ... checks: the
    layer's shape, finite; all or nothing). The layers cannot be added or removed: the
    methods that would are refused. Pickled and copied as a plain list of its arrays."""

    def __init__(self, arrays, model, attribute):
        super().__init__(arrays)
        self._model, self._attribute = model, attribute

    def __setitem__(self, index, value):
        layers = list(self)
        layers[index] = value
        if len(layers) != len(self):
            self._fixed()
        setattr(self._model, self._attribute, layers)     # copies into the live arrays

    def __reduce_ex__(self, protocol):
        return list, (list(self),)

    def _fixed(self, *args, **kwargs):
        raise TypeError(f"the model has one array per layer in "
                        f"{'coefs_' if self._attribute == 'weights' else 'intercepts_'}: "
                        f"assign an item or the whole list to change the values; layers "
                        f"cannot be added or removed")

    append = extend = insert = pop = remove = clear = sort = reverse = __delitem__ = \
        __iadd__ = __imul__ = _fixed


@contextlib.contextmanager
def _as_it_was_unless_trained(estimator):
    """A fit or partial_fit that fails before its trainer took a step leaves the estimator's
    attributes as they were (a refused call changes nothing: not classes_, n_features_in_,
    n_iter_, nor model_, which a new fit replaces with a network made for the call); one that
    fails after its steps, with the same model_, keeps what they did. The call records its
    trainer and the trainer's step count before training in the dict this yields.

    One call at a time trains an estimator: another, from any thread, is refused before it
    reads or changes anything (refused deep in its trainer, it had rewritten the shared
    trainer's settings, and its putting back of the attributes it found undid the running
    call's record: t_ and n_iter_ short of the steps taken)."""
    with _training_lock:
        if id(estimator) in _training:
            raise RuntimeError(f"this {type(estimator).__name__} is being trained by another "
                               f"call (another thread's fit or partial_fit): train it from "
                               f"one thread at a time")
        _training[id(estimator)] = threading.get_ident()
    try:
        before = dict(estimator.__dict__)
        training = {}
        try:
            yield training
        except BaseException:
            trainer = training.get("trainer")
            if estimator.__dict__.get("model_") is not before.get("model_") \
                    or trainer is None or trainer._step == training["step"]:
                estimator.__dict__.clear()
                estimator.__dict__.update(before)
            raise
    finally:
        with _training_lock:
            _training.pop(id(estimator), None)


# The estimators in a fit or partial_fit now (their ids: each is alive while it is here),
# with the thread that trains each
_training: dict = {}
_training_lock = threading.Lock()


def _after_fork_in_child() -> None:
    """A forked child has only the forking thread: the other threads' calls are not
    training there (their estimators would be refused for good), and the lock is new."""
    global _training_lock
    _training_lock = threading.Lock()
    me = threading.get_ident()
    for key in [key for key, thread in _training.items() if thread != me]:
        del _training[key]


if hasattr(os, "register_at_fork"):     # (not on Windows)
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _BaseMLP(BaseEstimator):
    """What MLPClassifier and MLPRegressor share: parameters, fit, partial_fit, attributes."""

    # ---- parameters ----
    def _network_options(self) -> dict:
        """The parameters, checked (at each fit: set_params may have changed them)."""
        hidden, names = self._checked_layers()
        self._check_training_parameters()
        dtype = self._checked_dtype()
        if not (isinstance(self.init, str) and self.init in ESTIMATOR_INITS):
            raise _parameter_error(self, "init", f"one of {ESTIMATOR_INITS}", self.init)
        return {"hidden": hidden, "activations": names, "dtype": dtype,
                "dropout": self._checked_dropout(hidden)}

    def _checked_layers(self):
        """(hidden layer sizes, fastbp activation names)."""
        hidden = self.hidden_layer_sizes
        if _is_whole(hidden):
            hidden = [hidden]
        # (a sized sequence: an iterator would be used up by the first fit)
        if isinstance(hidden, (str, bytes)) or not hasattr(hidden, "__len__"):
            raise _parameter_error(self, "hidden_layer_sizes",
                                   "an int or a sequence of ints >= 1", hidden)
        hidden = list(hidden)
        if not all(_is_whole(size) and size >= 1 for size in hidden):
            raise _parameter_error(self, "hidden_layer_sizes",
                                   "an int or a sequence of ints >= 1", self.hidden_layer_sizes)
        hidden = [int(size) for size in hidden]

        activation = self.activation
        names = [activation] * len(hidden) if isinstance(activation, str) else activation
        if isinstance(names, (bytes,)) or not hasattr(names, "__len__"):
            raise _parameter_error(self, "activation", f"one of {HIDDEN_ACTIVATIONS} or a list "
                                   f"of them, one per hidden layer", activation)
        names = list(names)
        if not isinstance(activation, str) and len(names) != len(hidden):
            raise ValueError(f"activation lists {len(names)} names but hidden_layer_sizes "
                             f"has {len(hidden)} hidden layers; give one name per hidden layer "
                             f"or a single name")
        for name in names:
            if not isinstance(name, str) or name.lower() not in HIDDEN_ACTIVATIONS:
                raise _parameter_error(self, "activation", f"one of {HIDDEN_ACTIVATIONS} (or a "
                                       f"list of them, one per hidden layer)", activation)
        return hidden, [_FASTBP_ACTIVATION.get(name.lower(), name.lower()) for name in names]

    def _check_training_parameters(self) -> None:
        """solver, learning_rate, batch_size, the real-valued parameters, flags."""
        if self.solver not in SOLVERS:
            raise _parameter_error(self, "solver", f"one of {SOLVERS}", self.solver)
        if self.learning_rate not in LEARNING_RATES:
            raise _parameter_error(self, "learning_rate", f"one of {LEARNING_RATES}",
                                   self.learning_rate)
        if not (self.batch_size == "auto" or (_is_whole(self.batch_size)
                                              and self.batch_size >= 1)):
            raise _parameter_error(self, "batch_size", "'auto' or an int >= 1", self.batch_size)
        for name, low, high, closed in (
                ("alpha", 0, None, True), ("learning_rate_init", 0, None, False),
                ("power_t", 0, None, True), ("tol", 0, None, True),
                ("momentum", 0, 1, True), ("validation_fraction", 0, 1, True),
                ("beta_1", 0, 1, True), ("beta_2", 0, 1, True), ("epsilon", 0, None, False)):
            value = getattr(self, name)
            ok = _is_real(value) and np.isfinite(value) and (
                value >= low if closed else value > low) and (high is None or value < high)
            if not ok:
                bounds = f"{'[' if closed else '('}{low}, {high if high is not None else 'inf'})"
                raise _parameter_error(self, name, f"a real number in {bounds}", value)
        for name in ("max_iter", "max_fun"):
            if not (_is_whole(getattr(self, name)) and getattr(self, name) >= 1):
                raise _parameter_error(self, name, "an int >= 1", getattr(self, name))
        if not ((_is_whole(self.n_iter_no_change) and self.n_iter_no_change >= 1)
                or (_is_real(self.n_iter_no_change) and self.n_iter_no_change == np.inf)):
            raise _parameter_error(self, "n_iter_no_change", "an int >= 1 or numpy.inf",
                                   self.n_iter_no_change)
        for name in ("shuffle", "warm_start", "nesterovs_momentum", "early_stopping"):
            if not _is_bool(getattr(self, name)):
                raise _parameter_error(self, name, "True or False", getattr(self, name))
        if self.early_stopping and self.solver != "lbfgs" and self.validation_fraction == 0:
            # (lbfgs ignores early_stopping, as scikit-learn's)
            raise _parameter_error(self, "validation_fraction", "a real number in (0, 1) "
                                   "with early_stopping=True (the rows held out to decide "
                                   "when to stop)", self.validation_fraction)
        if not (_is_bool(self.verbose) or (_is_whole(self.verbose) and self.verbose >= 0)):
            raise _parameter_error(self, "verbose", "a bool or an int >= 0", self.verbose)
        if self.n_threads is not None and not (_is_whole(self.n_threads)
                                               and 1 <= self.n_threads <= MAX_THREADS):
            raise _parameter_error(self, "n_threads", f"None or an int in [1, {MAX_THREADS}]",
                                   self.n_threads)
        if not (self.random_state is None
                or isinstance(self.random_state, np.random.RandomState)
                or _is_whole(self.random_state) and 0 <= self.random_state < 2**32):
            raise _parameter_error(self, "random_state", "an int in the range [0, 4294967295], "
                                   "an instance of 'numpy.random.mtrand.RandomState' or None",
                                   self.random_state)

    def _checked_dtype(self):
        """The model's dtype, or None: the input's (float32 kept, anything else float64)."""
        if self.dtype is None:
            return None
        try:
            dtype = np.dtype(self.dtype)
        except TypeError:
            dtype = None
        if dtype is None or dtype.name not in ("float32", "float64"):
            raise _parameter_error(self, "dtype", "None, 'float32' or 'float64'", self.dtype)
        return dtype

    def _checked_dropout(self, hidden) -> list:
        dropout = self.dropout
        listed = isinstance(dropout, (list, tuple)) or \
            isinstance(dropout, np.ndarray) and dropout.ndim == 1
        if listed:
            rates = list(dropout)
            if len(rates) != len(hidden):
                raise ValueError(f"dropout lists {len(rates)} rates but hidden_layer_sizes "
                                 f"has {len(hidden)} hidden layers; give one rate per hidden "
                                 f"layer or a single rate")
        else:
            rates = [dropout] * len(hidden)
        if not all(_is_real(rate) and 0 <= rate < 1 for rate in rates) or \
                not (_is_real(dropout) or listed):
            raise _parameter_error(self, "dropout", "a rate in [0, 1) or a list of them, one "
                                   "per hidden layer", dropout)
        return [float(rate) for rate in rates]

    def _optimizer(self, scale: float):
        """The fastbp optimizer for `solver` (docs/sklearn.md has the mapping).

        fastbp's loss is `scale` times smaller than scikit-learn's objective (which sums
        over the outputs where fastbp averages): SGD's rate is multiplied by it, and the
        epsilon of the scale-free rules divided by it, so the steps are scikit-learn's."""
        rate = float(self.learning_rate_init)
        epsilon = float(self.epsilon) / scale
        rule = optimizers.lookup(self.solver)
        if rule is optimizers.SGD:
            momentum = float(self.momentum)
            return optimizers.SGD(rate * scale, momentum=momentum,
                                  nesterov=bool(self.nesterovs_momentum) and momentum > 0)
        if rule is optimizers.Adam:
            return optimizers.Adam(rate, beta1=float(self.beta_1), beta2=float(self.beta_2),
                                   epsilon=epsilon)
        return rule(rate, epsilon=epsilon)                  # RMSprop, Adagrad

    def _output_activation(self) -> str:
        return self._loss().output_activation

    # ---- fitting ----
    def fit(self, X, y, sample_weight=None):
        """Fit the model to X and y (class labels, or real targets for the regressor).

        sample_weight: one weight >= 0 per row; the loss is the weighted mean over the rows.
        Returns self.
        """
        with _as_it_was_unless_trained(self) as training:
            return self._fit(X, y, sample_weight, False, training)

    def _fit(self, X, y, sample_weight, incremental, training):
        # (scikit-learn's validate_data drops a mask: the values it hides were trained on)
        check_unmasked(X, "X")
        check_unmasked(y, "y")
        settings = self._network_options()
        if incremental and self.early_stopping:
            raise ValueError("partial_fit does not support early_stopping=True")
        first_pass = not hasattr(self, "model_") or (not self.warm_start and not incremental)
        dtype = settings["dtype"] if first_pass else self.model_.dtype
        if dtype is None:                  # scikit-learn's rule: float32 stays float32
            dtype = [np.float64, np.float32]
        if _sparse_of_rows(X):
            # validate_data takes a CSR matrix's index arrays unchecked, and fastbp's own
            # check of them comes with the training: checked here, before any attribute
            # changes, so that a refused fit leaves the estimator as it was (other shapes:
            # validate_data's own messages), after scikit-learn's checks of the values
            # (its messages for complex, NaN and infinite values)
            values = getattr(X, "data", None)        # (DOK and LIL have no such array)
            if isinstance(values, np.ndarray) and values.dtype.kind in "fc":
                if values.dtype.kind == "c":
                    raise ValueError(f"Complex data not supported\n{X}\n")
                assert_all_finite(values, estimator_name=type(self).__name__,
                                  input_name="X")
            as_sparse_rows(X, "X", np.dtype(np.float32 if X.dtype == np.float32
                                            else np.float64), X.shape[1])
        X, Y, stratify, n_outputs = self._validate_input(X, y, incremental, first_pass, dtype)
        settings["dtype"] = X.dtype
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64,
                                                 ensure_non_negative=True)
            if not sample_weight.any():
                raise ValueError("Sample weights must contain at least one non-zero number "
                                 "(all the sample weights are zero).")
            # ratios the dtype cannot hold: refused before any attribute changes
            as_row_weights(sample_weight, X.dtype)
        # random_state is drawn from for a new model, a new trainer or the early-stopping
        # split; a partial_fit that continues the kept trainer only checks it (a
        # RandomState costs about 100 us to seed).
        if incremental and not first_pass and self.__dict__.get("_trainer") is not None:
            rng = None                     # (random_state checked with the parameters)
        else:
            rng = check_random_state(self.random_state)
        layer_sizes = [X.shape[1], *settings["hidden"], n_outputs]
        activations = settings["activations"] + [self._output_activation()]
        if first_pass:
            self._initialize(layer_sizes, activations, settings, rng)
        else:
            self._check_compatible(layer_sizes, activations, settings)

        if self.solver == "lbfgs":          # full batch; early_stopping does not apply
            self._fit_lbfgs(X, Y, sample_weight)
            return self

        validation = None
        X_train, Y_train, weights_train = X, Y, sample_weight
        if self.early_stopping:
            X_train, Y_train, weights_train, validation = self._split(
                X, Y, sample_weight, stratify, rng)
        n_train = X_train.shape[0]
        if self.batch_size == "auto":
            batch_size = min(200, n_train)
        else:
            if self.batch_size > n_train:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is "
                              "going to be clipped", UserWarning, stacklevel=3)
            batch_size = min(int(self.batch_size), n_train)
        trainer = self._trainer_for(incremental, batch_size, weights_train, rng)

        self.n_iter_ = 0
        training.update(trainer=trainer, step=trainer._step)
        l2_check = _L2TermCheck(self) if self._penalty else None
        trainer._epoch_check = l2_check
        try:
            if incremental:
                history = trainer.partial_fit(self.model_, X_train, Y_train,
                                              sample_weight=weights_train)
                if history.epochs:
                    self._end_of_epoch({key: values[-1] for key, values in
                                        history.history.items()}, n_train, l2_check)
                stopped = False
            else:
                trainer.epochs = int(self.max_iter)
                rule = _ScikitLearnRule(self, n_train, l2_check)
                metrics = None
                if validation is not None:
                    X_val, Y_val, y_val, weights_val = validation
                    metrics = [self._validation_metric(y_val, weights_val)]
                    validation = (X_val, Y_val)
                history = trainer.fit(self.model_, X_train, Y_train,
                                      validation_data=validation, sample_weight=weights_train,
                                      callbacks=[rule], metrics=metrics)
                stopped = rule.stopped
        finally:
            trainer._epoch_check = None
        self._check_ending(history, stopped, incremental,
                           diverged=l2_check is not None and l2_check.failed)
        return self

    def _initialize(self, layer_sizes, activations, settings, rng):
        """A fresh model and fresh records (first fit, or fit without warm_start)."""
        if self.init == "sklearn":
            # scikit-learn takes the factor from its one hidden activation for every layer,
            # the output layer included; with one activation per hidden layer, each layer
            # uses its own and the output layer the last hidden layer's
            hidden = settings["activations"]
            factors = [hidden[-1] if hidden else None] * len(layer_sizes)
            if isinstance(self.activation, str):
                factors = [_FASTBP_ACTIVATION.get(self.activation.lower(),
                                                  self.activation.lower())] * len(layer_sizes)
            factors[:len(hidden)] = hidden
            start = _sklearn_initial_parameters(layer_sizes, factors, rng)
            self.model_ = MLP(layer_sizes, activations, dtype=settings["dtype"], init="zeros",
                              dropout=settings["dropout"])
            self.model_.set_parameter_vector(start)
        else:
            seed = int(rng.randint(_SEED_LIMIT))
            self.model_ = MLP(layer_sizes, activations, dtype=settings["dtype"], seed=seed,
                              init=self.init, dropout=settings["dropout"])
        self.n_iter_ = 0
        self.t_ = 0
        self.loss_ = np.nan             # (until an epoch completes: the first may diverge)
        self.n_layers_ = len(layer_sizes)
        self.n_outputs_ = layer_sizes[-1]
        self.out_activation_ = {"sigmoid": "logistic"}.get(activations[-1], activations[-1])
        self._trainer = None
        self._schedule = None
        if self.solver == "lbfgs":
            # scikit-learn's lbfgs keeps no per-epoch records: loss_curve_, best_loss_ and
            # the validation records exist for the stochastic solvers only
            for name in ("loss_curve_", "best_loss_", "validation_scores_",
                         "best_validation_score_"):
                self.__dict__.pop(name, None)
            self._best_parameters = None
            return
        self.loss_curve_ = []
        self._no_improvement_count = 0
        if self.early_stopping:
            self.validation_scores_ = []
            self.best_validation_score_ = -np.inf
            self.best_loss_ = None
            self._best_parameters = [array.copy() for array in
                                     self.model_.weights + self.model_.biases]
        else:
            self.best_loss_ = np.inf
            self.validation_scores_ = None
            self.best_validation_score_ = None
            self._best_parameters = None

    def _check_compatible(self, layer_sizes, activations, settings):
        """warm_start and partial_fit continue the fitted model: its shape must not change."""
        model = self.model_
        if tuple(model.layer_sizes) != tuple(layer_sizes) or \
                tuple(model.activations) != tuple(activations):
            raise ValueError(
                f"warm_start/partial_fit continue the fitted network, layers "
                f"{list(model.layer_sizes)} with activations {list(model.activations)}; the "
                f"parameters and data now ask for layers {layer_sizes} with activations "
                f"{activations}. Fit with warm_start=False to start a new network.")
        if tuple(model.dropout) != tuple(settings["dropout"]):
            raise ValueError(f"warm_start/partial_fit continue the fitted network, whose "
                             f"dropout is {list(model.dropout)}; dropout is now {self.dropout!r}. "
                             f"Fit with warm_start=False to start a new network.")
        if self.solver == "lbfgs":
            return
        if "loss_curve_" not in self.__dict__:     # the earlier fits ran lbfgs
            self.loss_curve_ = []
            self._no_improvement_count = 0
            self.best_loss_ = None if self.early_stopping else np.inf
            self.validation_scores_ = self.best_validation_score_ = None
        if not self.early_stopping and getattr(self, "best_loss_", None) is None:
            self.best_loss_ = np.inf            # the earlier fits stopped early
        if self.early_stopping and getattr(self, "validation_scores_", None) is None:
            # the earlier fits ran without early stopping: start its records now
            self.validation_scores_ = []
            self.best_validation_score_ = -np.inf
            self._best_parameters = [array.copy() for array in
                                     self.model_.weights + self.model_.biases]

    def _fit_lbfgs(self, X, Y, sample_weight):
        """Full-batch L-BFGS (scipy's L-BFGS-B) on scikit-learn's objective: the loss, times
        _objective_scale, plus alpha / 2 * sum of the squared weights (not the biases) / the
        total sample weight. The loss and gradient come from the compiled core
        (MLP.gradients, in the model's dtype); L-BFGS-B works in float64."""
        model = self.model_
        self._check_in_dtype(None, self._loss(), 0.0)     # (Huber's delta: no other number)
        objective = _LbfgsObjective(self, X, Y, sample_weight)
        start = model.parameter_vector(np.float64)
        accepted = {"x": start, "iterations": 0}      # the last iterate L-BFGS accepted

        def on_iteration(intermediate_result):
            accepted["x"] = intermediate_result.x.copy()
            accepted["iterations"] += 1
            if self.verbose:
                print("Iteration %d, loss = %.8f" % (accepted["iterations"],
                                                     intermediate_result.fun))

        try:
            result = scipy.optimize.minimize(
                objective, start, method="L-BFGS-B", jac=True, callback=on_iteration,
                options={"maxiter": int(self.max_iter), "maxfun": int(self.max_fun),
                         "gtol": float(self.tol)})
        except KeyboardInterrupt:
            # as the stochastic solvers: keep the last completed step and say so
            model.set_parameter_vector(accepted["x"])
            self.n_iter_ = accepted["iterations"]
            self.loss_ = objective.reported_loss(accepted["x"])
            warnings.warn("Training interrupted by user.", UserWarning, stacklevel=4)
            return
        except BaseException:
            model.set_parameter_vector(start)          # a failed fit leaves the start
            raise
        loss = objective.reported_loss(result.x) if np.isfinite(result.x).all() else np.nan
        if not np.isfinite(loss):
            model.set_parameter_vector(start)
            self.n_iter_ = 0
            self.loss_ = objective.reported_loss(start)
            warnings.warn("lbfgs diverged (the loss or the parameters are not finite): the "
                          "model keeps the parameters it started from. Scale the data (e.g. "
                          "StandardScaler) or raise alpha.", RuntimeWarning, stacklevel=4)
            return
        model.set_parameter_vector(result.x)
        self.n_iter_ = min(int(result.nit), int(self.max_iter))
        self.loss_ = loss
        if result.status != 0:
            warnings.warn(f"lbfgs stopped after {result.nit} iteration(s) without converging "
                          f"(scipy status {result.status}: {result.message}). Raise max_iter "
                          f"or max_fun, or scale the data (e.g. StandardScaler).",
                          ConvergenceWarning, stacklevel=4)

    def _split(self, X, Y, sample_weight, stratify, rng):
        """Hold out validation_fraction of the rows (stratified for single-label
        classification), as scikit-learn does with early_stopping=True."""
        arrays = [X, Y] + ([sample_weight] if sample_weight is not None else [])
        # the generator itself, as scikit-learn: after the same initial draws, the same split
        seed = rng
        if stratify is not None and np.unique(stratify, return_counts=True)[1].min() < 2:
            stratify = None     # a class of one row cannot be stratified: split at random
        # (a float: train_test_split's own check refused NumPy's float32 scalars, naming
        # its test_size, where scikit-learn's fit skips that check)
        parts = train_test_split(*arrays, random_state=seed,
                                 test_size=float(self.validation_fraction), stratify=stratify)
        X_train, X_val, Y_train, Y_val = parts[:4]
        weights_train, weights_val = (parts[4], parts[5]) if sample_weight is not None \
            else (None, None)
        if X_val.shape[0] < 2:
            raise ValueError("The validation set is too small. Increase 'validation_fraction' "
                             "or the size of your dataset.")
        for part, weights in (("training", weights_train), ("validation", weights_val)):
            if weights is not None and not weights.any():
                raise ValueError(f"The sample weights of the {part} rows are all zero after "
                                 f"the early-stopping split; change random_state, "
                                 f"validation_fraction or the weights.")
        return X_train, Y_train, weights_train, (X_val, Y_val, Y_val, weights_val)

    def _trainer_for(self, incremental, batch_size, sample_weight, rng):
        """The Trainer for this call: a new one for fit (scikit-learn starts its optimizer
        afresh at each fit), the kept one for partial_fit (its optimizer state goes on)."""
        mean_weight = 1.0 if sample_weight is None else float(np.mean(sample_weight))
        # scikit-learn's penalty per batch: alpha / (2 * sum of the batch's sample weights)
        # * ||W||^2, i.e. coupled weight decay alpha / (batch_size * mean weight) on its
        # objective, which is `scale` times fastbp's loss.
        scale = self._objective_scale()
        self._penalty = 0.5 * float(self.alpha) / (batch_size * mean_weight)
        weight_decay = float(self.alpha) / (batch_size * mean_weight * scale)
        schedule = None
        if optimizers.lookup(self.solver) is optimizers.SGD and self.learning_rate != "constant":
            keep = (incremental and isinstance(self._schedule, _ScikitLearnRate)
                    and self._schedule.mode == self.learning_rate)
            schedule = self._schedule if keep else _ScikitLearnRate(self.learning_rate,
                                                                   float(self.power_t))
            schedule.power_t = float(self.power_t)
        self._schedule = schedule
        optimizer, loss = self._optimizer(scale), self._loss()
        self._check_in_dtype(optimizer, loss, weight_decay)
        if incremental and self._trainer is not None:
            trainer = self._trainer
            trainer.optimizer = optimizer               # same rule: the state carries on
            trainer.learning_rate = float(self.learning_rate_init)
            trainer.loss = loss
            trainer.batch_size = batch_size
            trainer.shuffle = bool(self.shuffle)
            trainer.schedule = schedule
            trainer.weight_decay = weight_decay
            trainer.n_threads = self.n_threads
        else:
            trainer = Trainer(loss, optimizer=optimizer,
                              learning_rate=float(self.learning_rate_init), epochs=1,
                              batch_size=batch_size, shuffle=bool(self.shuffle),
                              seed=int(rng.randint(_SEED_LIMIT)), schedule=schedule,
                              weight_decay=weight_decay, n_threads=self.n_threads)
        # loss_ as scikit-learn sums it: each batch's weighted mean times its rows (with
        # sample weights and several batches an epoch, not the epoch's weighted mean)
        trainer._batch_mean_loss = True
        trainer._warns_on_divergence = False     # (_check_ending: in scikit-learn's terms)
        self._trainer = trainer
        return trainer

    def _check_in_dtype(self, optimizer, loss, weight_decay):
        """The trainer's numbers that the model's dtype would change (Trainer.fit refuses
        them), refused first naming the estimator's parameter: they are derived from it
        (alpha gives the weight decay, learning_rate_init the rate, scaled), and the
        trainer's names differ (learning_rate is another parameter here)."""
        dtype = np.dtype(self.model_.dtype)
        try:
            check_numbers_in_dtype(optimizer, loss, weight_decay, dtype)
        except ValueError as error:
            name = _PARAMETER_OF.get(named_setting(error))
            if name is None:
                raise
            # (the trainer's hint "use 0 or a larger value": 0 is no learning_rate_init or
            # epsilon here; the advice below says what to change)
            reason = re.sub(r"; use (0 or )?a larger value$", "", str(error))
            raise ValueError(f"{name}={getattr(self, name)!r} does not fit this estimator's "
                             f"{dtype.name} model ({reason}, as fastbp's trainer takes it); "
                             f"use another {name}, or dtype='float64'") from None

    def _l2_term(self) -> float:
        """The L2 term scikit-learn adds to an epoch's loss, from the weights at its end."""
        return self._penalty * sum(float(np.vdot(w, w)) for w in self.model_.weights)

    def _end_of_epoch(self, logs, n_train, l2_check=None) -> bool:
        """Record an epoch as scikit-learn does and apply its stopping rule; True: stop.
        l2_check: the fit's _L2TermCheck, whose sum for this epoch is taken if it made one."""
        loss = float(logs["loss"]) * self._reported_scale()
        if self._penalty:
            l2_term = l2_check.take() if l2_check is not None else None
            loss += self._l2_term() if l2_term is None else l2_term
        self.n_iter_ += 1
        self.t_ += n_train
        self.loss_ = loss
        self.loss_curve_.append(loss)
        if self.verbose:
            print("Iteration %d, loss = %.8f" % (self.n_iter_, loss))
        tol = float(self.tol)
        if self.early_stopping and "val_score" in logs:
            score = float(logs["val_score"])
            self.validation_scores_.append(score)
            if self.verbose:
                print("Validation score: %f" % score)
            if not score >= self.best_validation_score_ + tol:     # NaN never improves
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                for saved, live in zip(self._best_parameters,
                                       self.model_.weights + self.model_.biases):
                    saved[...] = live
        else:
            if loss > self.best_loss_ - tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            self.best_loss_ = min(self.best_loss_, loss)
        schedule = self._schedule
        if schedule is not None and schedule.mode == "invscaling":
            schedule.factor = 1.0 / (self.t_ + 1) ** schedule.power_t
        if self._no_improvement_count > self.n_iter_no_change:
            what = "Validation score" if self.early_stopping else "Training loss"
            message = (f"{what} did not improve more than tol={tol:f} for "
                       f"{self.n_iter_no_change} consecutive epochs.")
            if schedule is not None and schedule.mode == "adaptive":
                if float(self.learning_rate_init) * schedule.factor > _MIN_ADAPTIVE_RATE:
                    schedule.factor /= 5.0
                    self._no_improvement_count = 0
                    if self.verbose:
                        print(f"{message} Setting learning rate to "
                              f"{float(self.learning_rate_init) * schedule.factor:f}")
                    return False
                message += " Learning rate too small."
            if self.verbose:
                print(f"{message} Stopping.")
            return True
        return False

    def _restore_best(self):
        """After an early-stopped fit: the parameters of the best validation score."""
        if self.early_stopping and self._best_parameters is not None:
            for live, saved in zip(self.model_.weights + self.model_.biases,
                                   self._best_parameters):
                live[...] = saved

    def _check_ending(self, history, stopped, incremental, diverged=False):
        """The warnings a fit ends with. diverged: its last epoch's loss with the L2 term
        was not finite (_L2TermCheck): the trainer undid it, as a diverged epoch of the
        core (history.diverged), whose warning it leaves to this one."""
        if diverged or history.diverged:
            why = "with the L2 term it is not finite" if diverged else \
                "NaN or infinite loss or parameters"
            # (counted as loss_curve_ counts, over partial_fit calls too: n_iter_ is each
            # partial_fit call's, 1, as scikit-learn's)
            warnings.warn(f"training stopped in iteration {len(self.loss_curve_) + 1}: the loss "
                          f"diverged ({why}); the parameters are those at the start of that "
                          f"iteration. Try a smaller learning_rate_init.", RuntimeWarning,
                          stacklevel=4)
        elif history.interrupted:
            warnings.warn("Training interrupted by user.", UserWarning, stacklevel=4)
        elif not incremental and not stopped and not history.diverged \
                and self.n_iter_ == self.max_iter:
            warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached "
                          f"and the optimization hasn't converged yet.", ConvergenceWarning,
                          stacklevel=4)

    # ---- predicting ----
    def __sklearn_is_fitted__(self) -> bool:
        return "model_" in self.__dict__

    def _forward(self, X, as_sklearn=True) -> np.ndarray:
        """The network's outputs for X, (n_samples, n_outputs_), computed in the model's
        dtype; with `as_sklearn`, in the dtype scikit-learn's estimators return
        (_output_dtype)."""
        check_unmasked(X, "X")
        out_dtype = self._output_dtype(X) if as_sklearn else None
        model = self.__dict__.get("model_")
        outputs = None
        rows = None if model is None else self._plain_input(X, model.dtype)
        if rows is not None:
            # What validate_data would hand on, without its 60-150 us a call (a one-row
            # predict takes a few): on any error, the slow path below raises its own.
            try:
                outputs = model.predict(rows)
            except ValueError:
                pass
        if outputs is None:
            check_is_fitted(self)
            if _sparse_of_rows(X):        # (scipy's conversions below read them unchecked)
                X = checked_csr(X, "X")
            # (dtype "numeric" refuses strings as scikit-learn's predict does; then the
            # model's dtype, checked again only where the conversion may overflow)
            X = validate_data(self, X, reset=False, dtype="numeric", accept_sparse="csr")
            X = check_array(X, dtype=self.model_.dtype, order="C", accept_sparse="csr",
                            ensure_all_finite=X.dtype != self.model_.dtype)
            outputs = self.model_.predict(X)
        return outputs if out_dtype is None else outputs.astype(out_dtype, copy=False)

    def _output_dtype(self, X):
        """The dtype scikit-learn's MLP returns for X: its forward pass multiplies X, kept
        as it is if numeric (bool, integers, floats; anything else made float64), by the
        fitted coefficients, so NumPy's promotion of X's dtype with the model's: float32
        where the model is float32 and X's values fit float32 exactly (bool, 8- and 16-bit
        integers, float16, float32), long double for long double X."""
        model = self.__dict__.get("model_")
        if model is None:
            return np.float64
        dtype = getattr(X, "dtype", None)
        if dtype is None and isinstance(X, (list, tuple)):
            try:        # the array scikit-learn makes of it: bool rows stay bool
                dtype = np.asarray(X).dtype
            except (ValueError, TypeError):     # ragged: validate_data says what is wrong
                dtype = None
        pandas = sys.modules.get("pandas")
        if pandas is not None and isinstance(X, pandas.DataFrame):
            # (a sparse column's values are of its subtype)
            kinds = [getattr(kind, "subtype", kind) for kind in X.dtypes.tolist()]
            dtype = np.result_type(*kinds) if kinds and all(
                isinstance(kind, np.dtype) for kind in kinds) else None
        if isinstance(dtype, np.dtype) and dtype.kind in "biuf":
            return np.result_type(dtype, model.dtype)
        return np.float64

    def _plain_input(self, X, dtype):
        """X as validate_data(self, X, reset=False, dtype=dtype, order="C",
        accept_sparse="csr") would hand it on, where that would only convert it: plain rows
        (_plain_rows), a list of such rows of floats or a data frame of the fitted columns
        (_plain_frame) in `dtype` and C order, or a CSR matrix or array of floats of that
        shape as it is (fastbp reads its values in `dtype`, rounded as validate_data's
        copy would be); else None."""
        if self._plain_rows(X):
            if X.dtype != dtype or not X.flags.c_contiguous:
                with np.errstate(over="ignore"):      # validate_data's own cast warns
                    return np.ascontiguousarray(X, dtype=dtype)
            return X
        if is_sparse(X) and X.format == "csr" and X.dtype.kind == "f" and X.ndim == 2 \
                and X.shape[0] >= 1 and X.shape[1] == self.__dict__.get("n_features_in_") \
                and "feature_names_in_" not in self.__dict__:
            return X
        if self._plain_frame(X):
            with np.errstate(over="ignore"):
                return np.ascontiguousarray(X.to_numpy(), dtype=dtype)
        if type(X) is list and "feature_names_in_" not in self.__dict__:
            try:              # (a list of rows of floats: what a JSON request gives)
                array = np.asarray(X)
            except (ValueError, TypeError):
                return None
            return self._plain_input(array, dtype) if array.dtype.kind == "f" else None
        return None

    def _plain_frame(self, X) -> bool:
        """X is a pandas DataFrame (not a subclass) of at least one row whose columns are
        the names the estimator was fitted with, in order, each of a NumPy float dtype
        (not an extension or sparse one, which validate_data converts its own way)."""
        pandas = sys.modules.get("pandas")
        names = self.__dict__.get("feature_names_in_")
        return (pandas is not None and names is not None and type(X) is pandas.DataFrame
                and X.shape[0] >= 1 and X.columns.tolist() == names.tolist()
                and all(isinstance(column, np.dtype) and column.kind == "f"
                        for column in X.dtypes.tolist()))

    def _plain_rows(self, X) -> bool:
        """X is a matrix that validate_data(self, X, reset=False) would only convert to the
        model's dtype, C order: a NumPy array (not a subclass) of real floats, of at least
        one row and n_features_in_ columns, for an estimator fitted without feature names
        (with them, an array's missing names draw scikit-learn's warning)."""
        return (type(X) is np.ndarray and X.ndim == 2 and X.dtype.kind == "f"
                and X.shape[0] >= 1 and X.shape[1] == self.__dict__.get("n_features_in_")
                and "feature_names_in_" not in self.__dict__)

    def _plain_training_rows(self, X, y, dtype, targets_ndim=1):
        """For partial_fit after the first call: (X, y) as validate_data(self, X, y,
        reset=False) would hand them on, where that would only convert them: X plain rows
        or a data frame of the fitted columns (_plain_input, not sparse), finite in
        `dtype`; y a NumPy array (not a subclass), or a pandas Series of a NumPy dtype
        (its values), of `targets_ndim` dimensions at most with a value for each row of X.
        Else None: the caller then takes validate_data's path, and its errors."""
        pandas = sys.modules.get("pandas")
        if pandas is not None and type(y) is pandas.Series and isinstance(y.dtype, np.dtype):
            y = y.to_numpy()
        if type(y) is not np.ndarray or not 1 <= y.ndim <= targets_ndim \
                or not (self._plain_rows(X) or self._plain_frame(X)):
            return None
        rows = self._plain_input(X, dtype)
        if y.shape[0] != rows.shape[0] or not np.isfinite(rows).all():
            return None
        return rows, y

    # ---- the parameters as scikit-learn names them ----
    @property
    def coefs_(self) -> list:
        """The weight matrices, (n_in, n_out) each: the live arrays of model_."""
        if "model_" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__} has no coefs_ before it is fitted")
        return _LiveLayers(self.model_.weights, self.model_, "weights")

    @coefs_.setter
    def coefs_(self, values):
        self.model_.weights = values

    @property
    def intercepts_(self) -> list:
        """The bias vectors, (n_out,) each: the live arrays of model_."""
        if "model_" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__} has no intercepts_ before it is fitted")
        return _LiveLayers(self.model_.biases, self.model_, "biases")

    @intercepts_.setter
    def intercepts_(self, values):
        self.model_.biases = values

    # ---- pickling: the kept Trainer refers to model_ by a weak reference ----
    def __setstate__(self, state):
        super().__setstate__(state)
        # the trainer pickles its optimizer state without the model: attach it again
        if getattr(self, "_trainer", None) is not None and getattr(self, "model_", None) is not None:
            self._trainer.bind(self.model_)
        # early stopping's best parameters are written in place by a warm-started fit:
        # copies where they came read-only (as the trainer's state: joblib's memory maps)
        best = getattr(self, "_best_parameters", None)
        if best is not None:
            self._best_parameters = [array if array.flags.writeable else np.array(array)
                                     for array in best]


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """A multilayer perceptron classifier trained by fastbp (scikit-learn's parameters).

    Binary: one sigmoid output and binary cross-entropy; multiclass: softmax and categorical
    cross-entropy; multi-label (y a 0/1 matrix): one sigmoid per label and binary
    cross-entropy. Parameters as sklearn.neural_network.MLPClassifier's ('lbfgs' is scipy's
    full-batch L-BFGS-B on the compiled loss and gradient; solver also 'rmsprop' and
    'adagrad'), plus fastbp's: activation may list one name per hidden layer, dropout,
    dtype (None: float32 input stays float32, anything else float64, as scikit-learn),
    init ('sklearn': scikit-learn's initial parameters from random_state, or fastbp.MLP's),
    n_threads. docs/sklearn.md maps each parameter to fastbp.

    Attributes: classes_, n_features_in_, feature_names_in_, n_outputs_, n_layers_,
    out_activation_, loss_, loss_curve_, best_loss_, validation_scores_,
    best_validation_score_, n_iter_, t_, coefs_, intercepts_ (the live arrays of model_),
    model_ (the fastbp.MLP).
    """

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 init="sklearn", dropout=0.0,
                 dtype=None, n_threads=None):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.init = init
        self.dropout = dropout
        self.dtype = dtype
        self.n_threads = n_threads

    @available_if(_stochastic_solver)
    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over (X, y), continuing the model and the optimizer's state.

        classes: every class label, required on the first call (y may hold only some).
        """
        with _as_it_was_unless_trained(self) as training:
            return self._partial_fit(X, y, sample_weight, classes, training)

    def _partial_fit(self, X, y, sample_weight, classes, training):
        if "classes_" not in self.__dict__:
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit.")
            if self.early_stopping:
                raise ValueError("partial_fit does not support early_stopping=True")
            self._network_options()        # a refused parameter records no classes
            given = unique_labels(classes)
            binarizer = LabelBinarizer()
            if type_of_target(y).startswith("multilabel"):
                # the labels are y's columns; `classes` must name every one, as scikit-learn
                # checks it (and later calls compare their `classes` with this one's)
                binarizer.fit(y)
                missing = np.setdiff1d(binarizer.classes_, given)
                if missing.size:
                    raise ValueError(f"`y` has classes not in `classes`: `classes` has "
                                     f"{given}, y's labels are {binarizer.classes_}")
            else:
                binarizer.fit(classes)
            self._label_binarizer = binarizer
            self.classes_ = binarizer.classes_
            self._partial_fit_classes = given
        elif classes is not None:
            first = self.__dict__.get("_partial_fit_classes", self.classes_)
            if not np.array_equal(first, unique_labels(classes)):
                raise ValueError(f"`classes={classes!r}` is not the same as on the first call "
                                 f"to partial_fit, which was {first!r}")
        return self._fit(X, y, sample_weight, True, training)

    def _validate_input(self, X, y, incremental, first_pass, dtype):
        if incremental and not first_pass:
            plain = self._plain_labels(X, y, dtype)
            if plain is not None:
                return plain
        X, y = validate_data(self, X, y, multi_output=True, dtype=dtype, order="C",
                             reset=first_pass, accept_sparse="csr")
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        if "classes_" not in self.__dict__ or first_pass and not incremental:
            binarizer = LabelBinarizer()
            binarizer.fit(y)
            self._label_binarizer = binarizer
            self.classes_ = binarizer.classes_
            self.__dict__.pop("_partial_fit_classes", None)     # (a fit's classes are y's)
        else:
            if type_of_target(y).startswith("multilabel") and \
                    not self._label_binarizer.y_type_.startswith("multilabel"):
                # (LabelBinarizer.transform's check; an indicator matrix of one label a
                # row otherwise passed as if it were the classes' indices)
                raise ValueError("The object was not fitted with multilabel input.")
            classes = unique_labels(y)
            if self.warm_start and not incremental:
                if set(classes) != set(self.classes_):
                    raise ValueError(f"warm_start can only be used where `y` has the same "
                                     f"classes as in the previous call to fit. Previously got "
                                     f"{self.classes_}, `y` has {classes}")
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` has "
                                 f"{self.classes_}. 'y' has {classes}.")
        binarizer = self._label_binarizer
        if binarizer.y_type_ == "multiclass":           # softmax: class indices as targets
            Y = np.searchsorted(self.classes_, y).astype(np.intp)
            # scikit-learn stratifies the early-stopping split of binary targets only
            return X, Y, None, len(self.classes_)
        # (any nonzero value of multi-label y is a 1, as scikit-learn takes it)
        Y = np.ascontiguousarray(binarizer.transform(y) != 0, dtype=X.dtype)
        stratify = Y[:, 0] if binarizer.y_type_ == "binary" else None
        return X, Y, stratify, Y.shape[1]

    def _plain_labels(self, X, y, dtype):
        """What _validate_input returns for a partial_fit after the first one, without
        scikit-learn's checks (validate_data, type_of_target, LabelBinarizer: 0.3-2.5 ms a
        call, against microseconds of training for a few rows), when they could only pass:
        X and y plain (_plain_training_rows), y 1-D, of integer or string labels (the kind
        of classes_), each one of classes_, binary or multiclass; else None."""
        classes = self.classes_
        kind = self._label_binarizer.y_type_
        if kind not in ("binary", "multiclass") or len(classes) < 2:
            return None
        plain = self._plain_training_rows(X, y, dtype)
        if plain is None:
            return None
        rows, y = plain
        if not (y.dtype.kind == classes.dtype.kind == "U" or (
                y.dtype.kind in "iu" and classes.dtype.kind in "iu")):
            return None
        index = np.searchsorted(classes, y)
        if not (index < len(classes)).all() or not (classes[index] == y).all():
            return None             # a label not in classes_: validate_data's path says so
        if kind == "multiclass":
            return rows, index.astype(np.intp, copy=False), None, len(classes)
        Y = (index == 1).astype(rows.dtype)[:, None]        # LabelBinarizer: 1 for classes_[1]
        return rows, Y, Y[:, 0], 1

    def _objective_scale(self) -> float:
        """scikit-learn's multi-label log-loss sums over the labels; fastbp's binary
        cross-entropy averages over them."""
        return float(self.n_outputs_) if self._label_binarizer.y_type_.startswith(
            "multilabel") else 1.0

    _reported_scale = _objective_scale

    def _loss(self):
        """Multiclass: categorical cross-entropy (softmax); binary and multi-label: binary
        cross-entropy (sigmoid). Once the model exists, its value clips the probabilities
        to [eps, 1 - eps] (eps: the model dtype's machine epsilon) as scikit-learn's
        log_loss does, so that loss_, loss_curve_ and L-BFGS's objective are scikit-learn's
        where outputs saturate too (the gradient stays unclipped, as scikit-learn's)."""
        model = self.__dict__.get("model_")
        clip = None if model is None else float(np.finfo(model.dtype).eps)
        return losses.CategoricalCrossentropy(clip=clip) \
            if self._label_binarizer.y_type_ == "multiclass" \
            else losses.BinaryCrossentropy(clip=clip)

    def _validation_metric(self, y_val, weights_val):
        """scikit-learn's validation score, accuracy, from the fit's validation pass."""
        multiclass = self._label_binarizer.y_type_ == "multiclass"

        def score(y_true, y_pred):
            if not np.isfinite(y_pred).all():
                return np.nan
            if multiclass:
                predicted, truth = y_pred.argmax(axis=1), y_val
            elif len(self.classes_) == 1:                   # predict gives the one class
                predicted = truth = np.ones(len(y_val), dtype=bool)
            elif y_pred.shape[1] == 1:                      # binary
                predicted, truth = y_pred[:, 0] > 0.5, y_val[:, 0] > 0.5
            else:                                           # multi-label: subset accuracy
                predicted, truth = y_pred > 0.5, y_val > 0.5
            return accuracy_score(truth, predicted, sample_weight=weights_val)
        return score

    def predict(self, X):
        """The predicted class of each row (a 0/1 row of labels for multi-label data)."""
        outputs = self._forward(X, as_sklearn=False)
        # LabelBinarizer.inverse_transform's rule, without its 30-50 us of checks a call:
        # the first largest output's class; 0/1 at half way between 0 and 1 otherwise.
        kind = self._label_binarizer.y_type_
        if kind == "multiclass":
            return self.classes_[outputs.argmax(axis=1)]
        if kind not in ("binary", "multilabel-indicator"):
            return self._label_binarizer.inverse_transform(
                outputs.ravel() if self.n_outputs_ == 1 else outputs)
        positive = (outputs > 0.5).astype(np.intp)
        if kind == "multilabel-indicator":
            if self._label_binarizer.sparse_input_:        # as inverse_transform: CSR
                import scipy.sparse
                return scipy.sparse.csr_matrix(positive)
            return positive
        if len(self.classes_) == 1:         # binary, fitted on one class
            return np.repeat(self.classes_[0], len(positive))
        return self.classes_[positive.ravel()]

    def predict_proba(self, X):
        """Class probabilities, (n_samples, n_classes) (each label's, for multi-label)."""
        outputs = self._forward(X)
        if self.n_outputs_ == 1:
            p = outputs.ravel()
            return np.column_stack([1 - p, p])
        return outputs

    def predict_log_proba(self, X):
        """The log of predict_proba (-inf where a probability is 0)."""
        probabilities = self.predict_proba(X)
        with np.errstate(divide="ignore"):
            return np.log(probabilities, out=probabilities)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        tags.input_tags.sparse = True          # scipy.sparse X: CSR, never densified
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    """A multilayer perceptron regressor trained by fastbp (scikit-learn's parameters).

    Identity outputs, one per target column (multi-output regression with a 2-D y).
    loss: 'squared_error' (scikit-learn's: half the mean squared error), 'mse' (the mean
    squared error), 'absolute_error' or 'mae', 'huber' (delta 1) or a fastbp.losses.Huber.
    Other parameters and attributes as MLPClassifier's (no classes_).
    """

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *,
                 solver="adam", alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 init="sklearn", dropout=0.0,
                 dtype=None, n_threads=None):
        self.loss = loss
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.init = init
        self.dropout = dropout
        self.dtype = dtype
        self.n_threads = n_threads

    @available_if(_stochastic_solver)
    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over (X, y), continuing the model and the optimizer's state."""
        with _as_it_was_unless_trained(self) as training:
            return self._fit(X, y, sample_weight, True, training)

    def _loss(self):
        loss = self.loss
        if isinstance(loss, losses.Huber):
            return loss
        if loss == "poisson":
            raise ValueError("loss='poisson' is not available in fastbp; the losses are "
                             f"{', '.join(REGRESSION_LOSSES)} or a fastbp.losses.Huber")
        if loss not in REGRESSION_LOSSES:
            raise _parameter_error(self, "loss", f"one of {REGRESSION_LOSSES} or a "
                                   f"fastbp.losses.Huber", loss)
        if loss in _SCIKIT_LEARN_LOSSES:
            model = getattr(self, "model_", None)     # (none yet: checking the name only)
            return _SCIKIT_LEARN_LOSSES[loss](np.float32 if model is None else model.dtype)
        return losses.get(loss)

    def _network_options(self):
        self._loss()                                       # checks `loss` with the others
        return super()._network_options()

    def _validate_input(self, X, y, incremental, first_pass, dtype):
        if is_sparse(y):    # (validate_data said "setting an array element with a sequence")
            raise TypeError(f"y must be a dense array of targets; got a scipy.sparse "
                            f"{type(y).__name__} (y.toarray() makes one)")
        text = y.dtype if hasattr(y, "dtype") else np.asarray(y).dtype
        if isinstance(text, np.dtype) and text.kind in "US":
            # (validate_data parsed numeric text, a "nan" among it; scikit-learn's MLP fails)
            raise TypeError(f"y must hold numbers; got an array of dtype {text}")
        plain = None
        if incremental and not first_pass:   # validate_data's checks, where they could
            plain = self._plain_training_rows(X, y, dtype, targets_ndim=2)  # only pass
            if plain is not None and not (
                    plain[1].dtype.kind in "fiu"
                    and (plain[1].ndim == 1 or plain[1].shape[1] >= 1)
                    and (plain[1].dtype.kind != "f" or np.isfinite(plain[1]).all())):
                plain = None
        if plain is not None:
            X, y = plain
        else:
            X, y = validate_data(self, X, y, multi_output=True, y_numeric=True, dtype=dtype,
                                 order="C", reset=first_pass, accept_sparse="csr")
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        with np.errstate(over="ignore"):
            Y = np.ascontiguousarray(y.reshape(y.shape[0], -1), dtype=X.dtype)
        if not np.isfinite(Y).all():
            if np.isnan(Y).any():
                raise ValueError("Input y contains NaN.")      # (scikit-learn's words)
            raise ValueError(f"y has values too large for the model's {X.dtype.name} (at most "
                             f"{float(np.finfo(X.dtype).max):.4g}); scale the targets"
                             + (" or use dtype='float64'" if X.dtype == np.float32 else ""))
        return X, Y, None, Y.shape[1]

    def _objective_scale(self) -> float:
        """scikit-learn's squared_error trains on the squared error summed over the outputs
        (/2, mean over rows); fastbp's loss averages over the outputs too."""
        return float(self.n_outputs_) if self.loss == "squared_error" else 1.0

    def _reported_scale(self) -> float:
        """scikit-learn reports squared_error as the mean over all elements (/2)."""
        return 1.0

    def _validation_metric(self, y_val, weights_val):
        """scikit-learn's validation score, R², from the fit's validation pass."""
        def score(y_true, y_pred):
            if not np.isfinite(y_pred).all():
                return np.nan
            return r2_score(y_val, y_pred, sample_weight=weights_val)
        return score

    def predict(self, X):
        """The predicted targets: (n_samples,) for one target, else (n_samples, n_outputs)."""
        outputs = self._forward(X)
        return outputs.ravel() if self.n_outputs_ == 1 else outputs

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.input_tags.sparse = True          # scipy.sparse X: CSR, never densified
        return tags
