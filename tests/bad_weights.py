"""Sample weights every entry point must refuse (with the model unchanged), as functions
of the number of rows n."""
import numpy as np

BAD_SAMPLE_WEIGHTS = {
    "negative": lambda n: np.r_[-1.0, np.ones(n - 1)],
    "nan": lambda n: np.r_[np.nan, np.ones(n - 1)],
    "inf": lambda n: np.r_[np.inf, np.ones(n - 1)],
    "short": lambda n: np.ones(n - 1),
    "long": lambda n: np.ones(n + 1),
    "2-d": lambda n: np.ones((n, 1)),
    "all-zero": lambda n: np.zeros(n),
    "strings": lambda n: np.array(["1"] * n),
}
