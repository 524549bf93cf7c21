"""Evaluate a checkpoint of a run folder: the latest, or the one --step names.

    python eval.py --config configs/clip_tiny.py --workdir runs/clip_tiny
    python eval.py --config configs/clip_tiny.py --workdir runs/clip_tiny --config.eval.split=compositional_test
    python eval.py --config configs/clip_tiny.py --workdir runs/clip_tiny --step 300

It can run while the folder's training job goes on (it takes no lock and moves nothing). A
damaged checkpoint is named, with the intact steps that --step can evaluate instead.

Prints the results table and writes results.json and the retrieval example grids into the workdir.
"""

from mmjax.training.allocator import reexec_with_mimalloc

reexec_with_mimalloc()  # first: XLA:CPU steps run 1.2-1.3x faster on mimalloc (allocator.py)

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from mmjax.training import distributed, host_devices  # noqa: E402
from mmjax.training.evaluate import evaluate_checkpoint  # noqa: E402
from mmjax.training.library_logs import route_library_logs  # noqa: E402
from mmjax.training.user_errors import one_line_errors  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder holding checkpoints/.")
_STEP = flags.DEFINE_integer("step", None, "The checkpoint step to evaluate (default: the latest).")
flags.mark_flags_as_required(["config", "workdir"])
# Multi-host runs (mmjax/training/distributed.py): a single process needs none of these flags.
_JOIN_RUN = distributed.define_flags()
# One CPU device over every core by default: evaluation runs its batches on replicated parameters,
# which one device computes with all cores; --cpu_devices=-1 splits the host as train.py does.
_SPLIT_CPU = host_devices.define_flags(default=1)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # Library chatter (Orbax, TFDS, JAX) goes to <workdir>/logs/eval.log, the terminal shows only
    # errors (and everything with --verbosity): progress bars and results are what a user reads.
    route_library_logs("eval")
    with one_line_errors():
        _JOIN_RUN(prepare=lambda num_processes: _SPLIT_CPU(_CONFIG.value, num_processes))
        evaluate_checkpoint(_CONFIG.value, _WORKDIR.value, _STEP.value)


if __name__ == "__main__":
    app.run(main)
