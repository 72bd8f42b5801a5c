"""Progress of a fit, shown in the client while the job runs (``verbose``).

In a terminal or a notebook: live tqdm bars, rows received while the input arrives, then the
batches of each epoch with the epoch's metrics at its end. Elsewhere (logs, CI): one line per
epoch. Both read what rank 0 and the feed publish in the run's store."""

import sys
import threading
from typing import Any, Dict, Optional, TextIO

from ..dataplane.protocol import RunStore

__all__ = ["EpochPrinter", "interactive"]


def interactive(stream: TextIO) -> bool:
    """True in a terminal or a Jupyter kernel, where a bar that redraws itself is readable."""
    if "ipykernel" in sys.modules:
        return True
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _line(record: Dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in record.items() if k != "epoch")


class EpochPrinter:
    """Polls the run's store and shows the fit's progress: live bars when ``live`` (default:
    when stdout is interactive), else one printed line per epoch as the records arrive."""

    def __init__(self, run: RunStore, epochs: int, verbose: bool,
                 live: Optional[bool] = None, stream: Optional[TextIO] = None):
        self.run, self.epochs, self.verbose = run, epochs, verbose
        self.stream = stream
        self.live = interactive(stream or sys.stdout) if live is None else live
        self._next = 1
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._ingest: Any = None  # tqdm bar of rows received, until training starts
        self._epoch_bar: Any = None  # tqdm bar of the current epoch's batches
        self._bar_epoch = 0

    def start(self) -> None:
        if self.verbose:
            self._thread = threading.Thread(target=self._poll, daemon=True,
                                            name="flink-torch-ml-progress")
            self._thread.start()

    def _say(self, text: str) -> None:
        if self.live:
            from tqdm.auto import tqdm

            tqdm.write(text, file=self.stream or sys.stdout)
        else:
            print(text, file=self.stream or sys.stdout, flush=True)

    def _poll(self) -> None:
        while self._next <= self.epochs:
            try:
                printed = self._print_available()
                if self.live:
                    self._update_bars()
            except Exception:  # the run is over and its store closed
                return
            if not printed and self._stop.wait(0.2 if self.live else 0.5):
                return

    def _print_available(self) -> bool:
        printed = False
        run = self.run
        if self._next == 1 and run.has(run.keys.resume_point):
            point = run.get_json(run.keys.resume_point)
            for skipped in point.get("skipped") or []:
                self._say(f"[flink-torch-ml] {skipped}")
            if point.get("epoch"):
                self._next = int(point["epoch"]) + 1
                self._say(f"[flink-torch-ml] attempt {run.attempt}: resuming after epoch "
                          f"{point['epoch']} from the checkpoint in {point['directory']!r}")
        while self._next <= self.epochs and run.has(run.keys.progress(self._next)):
            record = run.get_json(run.keys.progress(self._next))
            if self.live:
                self._finish_epoch_bar(self._next, record)
            else:
                self._say(f"[flink-torch-ml] epoch {self._next}/{self.epochs}: "
                          f"{_line(record)}")
            self._next += 1
            printed = True
        return printed

    # ------------------------------------------------------------------ live bars
    def _bar(self, **kwargs):
        from tqdm.auto import tqdm

        return tqdm(file=self.stream or sys.stdout, dynamic_ncols=True, leave=True, **kwargs)

    def _update_bars(self) -> None:
        run = self.run
        batch = run.get_json(run.keys.batch_progress) if run.has(run.keys.batch_progress) \
            else None
        if batch is None and self._next == 1:  # the input is still arriving
            received = sum(run.count(run.keys.fed_rows(r)) for r in range(run.world_size))
            if self._ingest is None:
                self._ingest = self._bar(desc="[flink-torch-ml] rows received", unit=" rows")
            self._ingest.update(received - self._ingest.n)
            return
        self._close_ingest()
        if batch is None or int(batch["epoch"]) < self._next:
            return
        epoch = int(batch["epoch"])
        if self._epoch_bar is None or self._bar_epoch != epoch:
            self._close_epoch_bar()
            self._epoch_bar = self._bar(desc=f"[flink-torch-ml] epoch {epoch}/{self.epochs}",
                                        total=int(batch["batches"]), unit=" batches")
            self._bar_epoch = epoch
        self._epoch_bar.update(int(batch["batch"]) - self._epoch_bar.n)

    def _finish_epoch_bar(self, epoch: int, record: Dict[str, Any]) -> None:
        self._close_ingest()
        if self._epoch_bar is None or self._bar_epoch != epoch:  # a fast epoch: no bar yet
            self._close_epoch_bar()
            run = self.run
            position = run.get_json(run.keys.batch_progress) \
                if run.has(run.keys.batch_progress) else {}
            total = int(position["batches"]) if position.get("epoch") == epoch else None
            self._epoch_bar = self._bar(desc=f"[flink-torch-ml] epoch {epoch}/{self.epochs}",
                                        total=total or 1, unit=" batches")
            self._bar_epoch = epoch
        bar = self._epoch_bar
        bar.update((bar.total or bar.n) - bar.n)
        bar.set_postfix_str(_line(record), refresh=False)
        self._close_epoch_bar()

    def _close_ingest(self) -> None:
        if self._ingest is not None:
            self._ingest.close()
            self._ingest = None

    def _close_epoch_bar(self) -> None:
        if self._epoch_bar is not None:
            self._epoch_bar.close()
            self._epoch_bar = None

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            try:
                self._print_available()
            except Exception:
                pass
            self._close_ingest()
            self._close_epoch_bar()
