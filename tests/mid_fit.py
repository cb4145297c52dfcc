"""A callback for tests of inputs changed in the middle of a fit."""
import fastbp


class RewriteAfterFirstEpoch(fastbp.callbacks.Callback):
    """Writes `value` into array[index] at the end of epoch 0 (as a careless callback, or
    another thread, could), and keeps the parameters it saw then (after_first)."""

    def __init__(self, array, index, value):
        super().__init__()
        self.array, self.index, self.value = array, index, value
        self.after_first = None

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            self.after_first = self.model.parameter_vector()
            self.array[self.index] = self.value
