"""Where the libraries' log lines go when `train.py` or `eval.py` runs: a file in the run folder.

Orbax logs about twelve INFO lines per checkpoint restore, and TFDS, grain and JAX add their own.
A user reads the progress bar and the results table; whoever debugs a run reads the log. So,
unless `--verbosity` is given on the command line:

    <workdir>/logs/<program>.log   every record at INFO and above, from every library (appended;
                                   each line names the time, the process id and the source line;
                                   process N > 0 of a multi-process job writes <program>.process<N>.log)
    the terminal                   records at ERROR and above only

The file is opened only once the job holds the run folder (`write_to_run_folder`, called by the
training loop after it takes the folder's lock, and by eval.py for an existing folder): records
logged before are kept in memory and written then, so a job that is refused a folder in use
writes nothing into it. With `--verbosity=0` (INFO), `--verbosity=-1` (WARNING) and so on, the
terminal shows what absl normally shows, and no file is written.
"""

from __future__ import annotations

import logging
import logging.handlers
import os

from absl import flags
from absl import logging as absl_logging

_FORMAT = "%(asctime)s %(levelname).1s pid=%(process)d %(name)s %(filename)s:%(lineno)d] %(message)s"
_BUFFERED_RECORDS = 10_000  # the most records held before the file opens (the oldest are dropped)


class _RunFolderLog(logging.handlers.MemoryHandler):
    """Holds records in memory until `open` names the file, then writes each one as it comes."""

    def __init__(self, program: str):
        super().__init__(capacity=_BUFFERED_RECORDS, flushLevel=logging.CRITICAL + 1, target=None,
                         flushOnClose=False)
        self.program = program
        self.setLevel(logging.INFO)

    def shouldFlush(self, record: logging.LogRecord) -> bool:
        if self.target is None and len(self.buffer) > self.capacity:
            del self.buffer[0]
        return self.target is not None

    def open(self, path: str) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        target = logging.FileHandler(path, encoding="utf-8")
        target.setFormatter(logging.Formatter(_FORMAT))
        self.acquire()
        try:
            self.setTarget(target)
            self.flush()
        finally:
            self.release()

    def close(self) -> None:
        if self.target is not None:
            self.target.close()
        super().close()


def route_library_logs(program: str) -> bool:
    """Unless the user passed --verbosity: library records at INFO and above are kept for the run
    folder's log file, and the terminal shows errors only. Returns whether it rerouted them."""
    if flags.FLAGS["verbosity"].present:
        return False
    # absl's verbosity is the level of its logger (Orbax logs through absl), the root logger's
    # level is Python's (TFDS, grain, JAX): both must let INFO through for the file to see it.
    absl_logging.set_verbosity(absl_logging.INFO)
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.addHandler(_RunFolderLog(program))
    absl_logging.get_absl_handler().setLevel(logging.ERROR)  # the terminal's handler
    return True


def write_to_run_folder(workdir: str, process_index: int = 0) -> str | None:
    """Opens `<workdir>/logs/<program>.log` for the records `route_library_logs` keeps (and
    writes those kept so far); returns its path, or None when logs are not rerouted."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, _RunFolderLog):
            suffix = f".process{process_index}" if process_index else ""
            path = os.path.join(workdir, "logs", f"{handler.program}{suffix}.log")
            if handler.target is None:
                handler.open(path)
            return path
    return None
