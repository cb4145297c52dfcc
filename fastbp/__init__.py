"""fastbp: fast CPU training of multilayer perceptrons by back-propagation and SGD.

    model = fastbp.MLP([784, 128, 10], ["relu", "softmax"])
    history = fastbp.Trainer("cce", learning_rate=0.05, epochs=5).fit(model, X, y)
    probabilities = model.predict(X_test)
"""
from fastbp import losses
from fastbp.model import MLP, load
from fastbp.trainer import History, Trainer

__version__ = "0.1.0"
__all__ = ["MLP", "Trainer", "History", "load", "losses", "__version__"]
