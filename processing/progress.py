"""One line per epoch with losses, time and images/s (readable in CI logs, unlike progress bars)."""
import sys
import time

import keras


class EpochProgress(keras.callbacks.Callback):
    def __init__(self, n_images, epochs):
        super().__init__()
        self.n_images, self.epochs = n_images, epochs
        self.images_per_second = []

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self.started
        self.images_per_second.append(self.n_images / seconds)
        values = "  ".join(f"{name} {value:.4f}" for name, value in (logs or {}).items())
        print(f"epoch {epoch + 1}/{self.epochs}  {values}  {seconds:.1f} s  {self.images_per_second[-1]:.1f} img/s",
              flush=True)


def report(message):
    print(message, file=sys.stdout, flush=True)
