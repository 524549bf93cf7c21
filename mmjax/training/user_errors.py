"""How `train.py` and `eval.py` end on an error the user can fix: one line saying what to do.

A traceback helps whoever debugs mmjax, not someone whose disk is full or whose run folder is in
use by another job. The errors listed here carry messages written for the user (the folder, the
step, what is wrong, what to run next); any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator

from absl import logging as absl_logging

from mmjax.training.checkpoint import CheckpointDamaged, CheckpointSaveFailed, storage_error
from mmjax.training.run_lock import RunFolderLocked

# Config and input errors (ValueError, FileNotFoundError) name the field or file and the fix.
USER_ERRORS = (RunFolderLocked, CheckpointDamaged, CheckpointSaveFailed, ValueError, FileNotFoundError)


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Turns the user errors raised inside into `error: <message>` on stderr and exit code 1.

    Also keeps Orbax's background threads from logging tracebacks for a failed write that
    `Checkpointer` reports itself in that one line.
    """
    absl_logging.get_absl_logger().addFilter(_not_a_storage_error_from_orbax)
    try:
        yield
    except USER_ERRORS as error:
        sys.exit(f"error: {error}")
    except OSError as error:  # writing a metrics line or a plot can meet the same full disk
        if storage_error(error) is None:
            raise
        sys.exit(f"error: {error}. Free space (or fix the permission) and run the same command again.")
    finally:
        absl_logging.get_absl_logger().removeFilter(_not_a_storage_error_from_orbax)


def _not_a_storage_error_from_orbax(record: logging.LogRecord) -> bool:
    if "orbax" not in record.pathname:
        return True
    return storage_error(record.exc_info[1] if record.exc_info else record.getMessage()) is None


def command_main(argv: list[str], run: Callable[[], None]) -> None:
    """The body of a command-line tool's absl `main`: no stray arguments, then `run()` with user
    errors ending in one line (`one_line_errors`)."""
    from absl import app

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    with one_line_errors():
        run()
