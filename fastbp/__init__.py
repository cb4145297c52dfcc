"""fastbp: fast CPU training of multilayer perceptrons by back-propagation and SGD.

    model = fastbp.MLP([784, 128, 10], ["relu", "softmax"])
    history = fastbp.Trainer("cce", learning_rate=0.05, epochs=5).fit(model, X, y)
    probabilities = model.predict(X_test)
"""
try:
    from fastbp import _core  # noqa: F401 (the compiled core; every module below needs it)
except ImportError:
    import importlib.machinery as _machinery
    import os as _os
    _here = _os.path.dirname(_os.path.abspath(__file__))
    if not any(_os.path.exists(_os.path.join(_here, "_core" + _suffix))
               for _suffix in _machinery.EXTENSION_SUFFIXES):
        # (`python -m fastbp` run in the checkout imported its source tree, first on the
        # path, instead of the installed package, and failed as "a circular import")
        raise ImportError(f"fastbp's compiled core is not built in {_here}: this is the "
                          f"source tree (imported from the current folder?), not an "
                          f"installed fastbp. Run from another folder, or build it in "
                          f"place: pip install -e . (or python setup.py build_ext "
                          f"--inplace)") from None
    raise
from fastbp import losses
from fastbp.model import MLP, load
from fastbp.trainer import History, Trainer

__version__ = "0.1.0"
__all__ = ["MLP", "Trainer", "History", "load", "losses", "__version__"]
