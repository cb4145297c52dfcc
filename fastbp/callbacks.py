"""Callbacks: code that runs between epochs of a fit (never inside one)."""
from __future__ import annotations


class Callback:
    """Subclass and override `on_epoch_end`; return True from it to stop training."""

    def on_epoch_end(self, epoch: int, logs: dict):
        """Called after each epoch (numbered from 0) with that epoch's figures:
        loss, seconds, samples_per_second. The model holds the epoch's parameters."""
        return None


class ProgressPrinter(Callback):
    """Prints one line per epoch: loss and training speed (what `verbose=1` uses)."""

    def __init__(self, n_epochs: int, print_function=print):
        self.n_epochs = n_epochs
        self.print_function = print_function

    def on_epoch_end(self, epoch, logs):
        width = len(str(self.n_epochs))
        self.print_function(f"epoch {epoch + 1:>{width}}/{self.n_epochs}  loss {logs['loss']:.4f}  "
                            f"{logs['samples_per_second']:,.0f} samples/s")
