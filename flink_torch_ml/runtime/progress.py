"""Per-epoch progress of a fit, printed in the client while the job runs (``verbose``)."""

import threading
from typing import Optional

from .protocol import RunStore

__all__ = ["EpochPrinter"]


class EpochPrinter:
    """Polls the run's store for per-epoch records and prints one line per epoch as they
    arrive."""

    def __init__(self, run: RunStore, epochs: int, verbose: bool):
        self.run, self.epochs, self.verbose = run, epochs, verbose
        self._next = 1
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        if self.verbose:
            self._thread = threading.Thread(target=self._poll, daemon=True,
                                            name="flink-torch-ml-progress")
            self._thread.start()

    def _poll(self) -> None:
        while self._next <= self.epochs:
            try:
                printed = self._print_available()
            except Exception:  # the run is over and its store closed
                return
            if not printed and self._stop.wait(0.5):
                return

    def _print_available(self) -> bool:
        printed = False
        run = self.run
        if self._next == 1 and run.has(run.keys.resume_point):
            point = run.get_json(run.keys.resume_point)
            for skipped in point.get("skipped") or []:
                print(f"[flink-torch-ml] {skipped}", flush=True)
            if point.get("epoch"):
                self._next = int(point["epoch"]) + 1
                print(f"[flink-torch-ml] attempt {run.attempt}: resuming after epoch "
                      f"{point['epoch']} from the checkpoint in {point['directory']!r}",
                      flush=True)
        while self._next <= self.epochs and run.has(run.keys.progress(self._next)):
            record = run.get_json(run.keys.progress(self._next))
            line = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                             for k, v in record.items() if k != "epoch")
            print(f"[flink-torch-ml] epoch {self._next}/{self.epochs}: {line}", flush=True)
            self._next += 1
            printed = True
        return printed

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            try:
                self._print_available()
            except Exception:
                pass
