"""The training loop: one flat function in commented stages, for every task.

    set up the run folder -> prepare data -> build mesh, task, optimizer -> create or restore the
    state -> loop { next batch -> compiled step -> (every N) log, evaluate, checkpoint } ->
    final checkpoint -> evaluate -> results table, results.json, plots

The host never waits for the device inside the loop except every `log_every` steps, when it fetches
the metrics of the steps since the last log (and checks them for NaN). Batches are prepared by
loader threads while the device computes.

What goes wrong, and what happens then:
  - A second job on the same run folder: it refuses at start, before writing anything, naming the
    job that holds the folder (`run_lock`); a lock left by a job that died is taken over.
  - Preemption (SIGTERM from a scheduler, or Ctrl-C): the step in flight finishes, a checkpoint of
    it is saved, the loop returns and the process exits 0; the next run resumes from it
    (`PreemptionWatch`, which also keeps several processes stopping at the same step).
  - A crash (`kill -9`, a lost machine): nothing is done at the time; the next run resumes from the
    last complete checkpoint, with the data position and RNG saved in it, and ends with the same
    parameters, bit for bit, as a run that was never interrupted. A save cut short never damages
    the checkpoint before it (see `checkpoint`), and the metrics log keeps whole lines of the steps
    that the final state went through (`metric_writer`).
  - A damaged checkpoint (a truncated file, values that fail their checksum): it is moved aside and
    the newest intact one resumed, with a warning (`fall_back_to_intact=False`: an error).
  - A save that fails (disk full, quota, permission): the run stops naming the folder, the space a
    checkpoint needs and the space that is free, and the checkpoint it will resume from, checked.
  - NaN or Inf in the loss or the gradient norm: every step is checked before any checkpoint is
    written, and the run stops naming the first bad step and metric (`NonFiniteGuard`); with
    `config.optimizer.skip_nonfinite_steps = N` such steps are skipped and counted instead, and the
    run stops after N in a row.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from mmjax.data.prepare import prepare_data
from mmjax.data.pipeline import make_train_loader
from mmjax.evaluation.report import plot_training_curves, write_text_atomically
from mmjax.training import sharding as shd
from mmjax.training.checkpoint import Checkpointer
from mmjax.training.library_logs import write_to_run_folder
from mmjax.training.metric_writer import MetricWriter
from mmjax.training.optimizer import skipped_step_counts
from mmjax.training.run_lock import RunFolderLocked, RunLock
from mmjax.training.setup import config_to_json, setup_training
from mmjax.training.state import count_params


def _mean_metrics(per_step: list[dict]) -> dict[str, float]:
    """Averages the metrics of several steps (already on the host); no steps give no metrics."""
    if not per_step:
        return {}
    return {name: float(np.mean([m[name] for m in per_step])) for name in per_step[0]}


class NonFiniteGuard:
    """Checks each step's loss and gradient norm; names the first bad step, or counts skipped ones.

    Steps are checked when their metrics reach the host (every `log_every` steps, and at every
    checkpoint step before the save), one by one: the error names the first step whose loss or
    gradient norm was NaN or Inf, not the logging step that noticed it, and no checkpoint is ever
    written after it. With `skip_limit` (config.optimizer.skip_nonfinite_steps) > 0, the optimizer
    has made such steps no-ops (see `optimizer`): they are left out of the logged averages and
    training goes on, until `skip_limit` of them come in a row, which is divergence, not a bad batch.
    The optimizer decides on the gradients alone, so the logged `skipped_steps` (its count) leaves
    out the rare step whose loss is NaN while every gradient is finite; this guard counts it as bad.

    Args:
      skip_limit: 0 to stop at the first bad step; N to skip bad steps and stop after N in a row.
      streak: bad steps in a row just before `next_step` (a resumed run continues the count).
      next_step: the first step that will be checked.
    """

    WATCHED = ("loss", "grad_norm")

    def __init__(self, skip_limit: int, streak: int = 0, next_step: int = 1):
        self.skip_limit = skip_limit
        self.streak = streak
        self.streak_start = next_step - streak

    def check(self, first_step: int, per_step: list[dict]) -> list[dict]:
        """Returns the metrics of the finite steps among `per_step` (steps first_step, +1, ...)."""
        finite = []
        for step, metrics in enumerate(per_step, start=first_step):
            bad = [name for name in self.WATCHED if not math.isfinite(metrics[name])]
            if not bad:
                self.streak = 0
                finite.append(metrics)
                continue
            what = " and ".join(f"{name} = {float(metrics[name])}" for name in bad)
            if not self.skip_limit:
                raise FloatingPointError(
                    f"{what} at step {step} (the first non-finite step); stopping before a corrupt "
                    "checkpoint is written, the last checkpoint is from before it. Lower the learning "
                    "rate or check the data; config.optimizer.skip_nonfinite_steps = N skips such "
                    "steps and stops after N in a row."
                )
            if self.streak == 0:
                self.streak_start = step
            self.streak += 1
            if self.streak >= self.skip_limit:
                raise FloatingPointError(
                    f"{what} at step {step}: {self.streak} non-finite steps in a row (steps "
                    f"{self.streak_start} to {step}), the limit set by "
                    f"config.optimizer.skip_nonfinite_steps = {self.skip_limit}. They were skipped "
                    "(no checkpoint holds them), but the run is not recovering: lower the learning "
                    "rate or check the data."
                )
        return finite


class PreemptionWatch:
    """Turns a preemption notice into "save a checkpoint after this step and return".

    A scheduler that wants its machine back sends SIGTERM and, after a grace period, SIGKILL. A
    signal can land anywhere (inside a device step, an asynchronous save, a print), so the handler
    only sets a flag; the loop reads it between steps, where the state is whole. Ctrl-C (SIGINT)
    takes the same path; a second signal of either kind goes to the handler that was there before
    (by default: stop at once). `restore()` puts the previous handlers back when the loop ends.

    Several processes must all stop after the *same* step: one that stopped alone would leave the
    others waiting forever in the next step's collectives, and their checkpoints would disagree.
      - One process: the flag is read at every step; there is nothing to agree on.
      - Several, with JAX's preemption service (on by default once `jax.distributed.initialize`
        has run): JAX itself listens for SIGTERM on every process, tells the others through the
        coordination service, and they agree on a step;
        `multihost_utils.reached_preemption_sync_point(step)`, called by every process at every
        step, turns True at that step everywhere (Orbax's `CheckpointManager.reached_preemption`
        is a wrapper around it). No Python SIGTERM handler is installed, as it would replace JAX's;
        Ctrl-C reaches a single process and keeps its default (KeyboardInterrupt).
      - Several, with the service turned off (`jax_enable_preemption_service=False`): each process
        keeps its own flag, and every `agree_every` steps (the logging interval, where the host
        waits for the device anyway) one tiny all-gather tells all of them whether any got a
        signal; all stop there.
    Python runs signal handlers on the main thread only: called from another thread, the watch
    installs nothing and never fires.
    """

    def __init__(self, agree_every: int):
        self.agree_every = agree_every
        self.received: str | None = None  # the name of the signal this process received
        self._previous: dict[int, Any] = {}
        self._use_jax_sync = jax.process_count() > 1 and jax.config.jax_enable_preemption_service
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in () if self._use_jax_sync else (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.received = signal.Signals(signum).name
        self._restore(signum)

    def _restore(self, signum: int) -> None:
        # None: the previous handler was not installed from Python and cannot be put back.
        if self._previous.get(signum) is not None:
            signal.signal(signum, self._previous[signum])

    def should_stop(self, step: int) -> bool:
        """True at the step after which this run (every process of it) stops. Call at every step."""
        if self._use_jax_sync:
            if multihost_utils.reached_preemption_sync_point(step):
                self.received = "SIGTERM to one of the processes"
                return True
            return False
        if jax.process_count() == 1:
            return self.received is not None
        if step % self.agree_every:
            return False
        anyone = np.any(multihost_utils.process_allgather(np.int32(self.received is not None)))
        if anyone and self.received is None:
            self.received = "a signal to another process"
        return bool(anyone)

    def restore(self) -> None:
        for signum in self._previous:
            self._restore(signum)


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, stop_after: int | None = None,
    fall_back_to_intact: bool = True,
) -> dict[str, Any] | None:
    """Trains `config` in `workdir` (resuming if it holds checkpoints), evaluates, writes artifacts.

    `stop_after` ends the run after that step with a checkpoint and no evaluation, exactly as an
    interrupted run would end; calling again resumes it. SIGTERM and Ctrl-C end it the same way
    after the step in flight. A damaged latest checkpoint is moved aside and the newest intact one
    resumed, with a warning; `fall_back_to_intact=False` makes it an error instead. Returns the
    final evaluation results (None when stopped early).

    The run folder is locked for the whole call (see `run_lock`): a second job on the same folder
    raises RunFolderLocked before anything is written.
    """
    with contextlib.ExitStack() as cleanup:  # on any exit: files closed, then the lock released
        lock = hold_run_folder(workdir)
        if lock is not None:
            cleanup.callback(lock.release)
        # The folder is this job's: library logs (when train.py reroutes them) go to its logs/.
        write_to_run_folder(workdir, jax.process_index())
        return _train_and_evaluate(config, workdir, stop_after, fall_back_to_intact, cleanup)


def hold_run_folder(workdir: str) -> RunLock | None:
    """Locks `workdir` for this job: process 0 takes the lock for every process of the job.

    Every process learns whether process 0 got it and raises RunFolderLocked if not, so that a
    refused multi-process job stops everywhere instead of training without process 0. Returns the
    lock process 0 holds (None in the others).
    """
    lock, refusal = None, None
    if jax.process_index() == 0:
        lock = RunLock(workdir)
        try:
            lock.acquire()
        except RunFolderLocked as error:
            lock, refusal = None, error
    if jax.process_count() > 1:
        held = bool(multihost_utils.process_allgather(np.int32(refusal is None))[0])
        if not held and refusal is None:
            refusal = RunFolderLocked(f"{os.path.abspath(workdir)} is in use by another training job "
                                      "(process 0 of this job found it locked; its output names the holder)")
    if refusal is not None:
        raise refusal
    return lock


def _train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, stop_after: int | None, fall_back_to_intact: bool,
    cleanup: contextlib.ExitStack,
) -> dict[str, Any] | None:
    is_main = jax.process_index() == 0
    # --- Set up the run folder -------------------------------------------------------------------
    os.makedirs(workdir, exist_ok=True)
    if is_main:
        write_text_atomically(os.path.join(workdir, "config.json"), config_to_json(config))

    # --- Mesh, task, optimizer, state (first: a config mistake stops before any data is built) ---
    mesh = shd.make_mesh(config.mesh)
    task, schedule, init_fn, abstract_state, train_step = setup_training(config, mesh)

    # --- Data: build the dataset and tokenizer if missing, then the training iterator -----------
    # A run keeps its tokenizer in the run folder: a resumed run reads text exactly as before.
    run_tokenizer = os.path.join(workdir, "tokenizer.model")
    data = prepare_data(config.data, tokenizer_path=run_tokenizer if os.path.exists(run_tokenizer) else None)
    if is_main and data.tokenizer_path != run_tokenizer:
        shutil.copyfile(data.tokenizer_path, run_tokenizer)
    local_batch_size = config.batch_size // jax.process_count()
    train_iter = make_train_loader(
        data.split("train"),
        task.train_preprocess(data, config),
        batch_size=local_batch_size,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        num_threads=config.data.num_threads,
        cache_decoded=config.data.get("cache_decoded", False),
    )

    # The folders of saves that a crash cut short are deleted here; they were never "latest".
    # Knowing the state's shapes, a failed save can check the checkpoints that remain.
    checkpointer = Checkpointer(
        os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints, delete_unfinished=True,
        abstract_state=abstract_state,
    )
    if checkpointer.latest_step() is not None:
        # A damaged checkpoint (unreadable, truncated, values that fail their checksum) is moved
        # aside and the one before it resumed; the lost steps are trained again.
        _, state, damaged = checkpointer.restore_newest_intact(abstract_state, train_iter, fall_back_to_intact)
        for damage in damaged:
            print(f"Warning: {damage}. Moved it to {checkpointer.damaged_directory}/ and resumed from "
                  "the newest intact checkpoint.", file=sys.stderr)
        print(f"Resumed from {checkpointer.directory} at step {int(state.step)}.")
    else:
        state = init_fn()
    start_step = int(state.step)
    if is_main:
        print(f"Model: {count_params(state.params):,} parameters; mesh {dict(mesh.shape)}; "
              f"global batch {config.batch_size}.")

    # --- Train ------------------------------------------------------------------------------------
    writer = cleanup.enter_context(MetricWriter(workdir, start_step))
    skip_limit = config.optimizer.get("skip_nonfinite_steps", 0)
    skip_counts = skipped_step_counts(state.opt_state)  # None when skipping is off
    guard = NonFiniteGuard(skip_limit, int(skip_counts[0]) if skip_counts else 0, start_step + 1)
    pending: list[dict] = []
    bar = tqdm(total=config.num_steps, initial=start_step, desc="train", unit="step",
               disable=not is_main, dynamic_ncols=True)
    last_log_time, last_log_step = time.perf_counter(), start_step
    last_step = config.num_steps if stop_after is None else min(stop_after, config.num_steps)
    preempted_at = None
    preemption = PreemptionWatch(agree_every=config.log_every)
    try:
        for step in range(start_step + 1, last_step + 1):
            batch = shd.to_global_batch(next(train_iter), mesh)
            state, metrics = train_step(state, batch)
            pending.append(metrics)
            # Keep at most two steps in flight: wait for the step *before* the one just dispatched.
            # The device always has a queued step, so it never idles, and the host cannot run ahead
            # by a whole logging window (holding its batches in memory and making the progress bar
            # report dispatch speed instead of training speed).
            if len(pending) >= 2:
                jax.block_until_ready(pending[-2]["loss"])
            bar.update(1)
            # After a preemption notice this step is the last: it is checked and saved below.
            preempted = preemption.should_stop(step)
            final = step == last_step or preempted

            # Checkpoint steps are logged too, so that no checkpoint is written before every one of
            # its steps was checked for NaN.
            if step % config.log_every == 0 or step % config.checkpoint_every == 0 or final:
                per_step = jax.device_get(pending)
                summary = _mean_metrics(guard.check(step - len(per_step) + 1, per_step))
                pending = []
                now = time.perf_counter()
                summary["examples_per_sec"] = (step - last_log_step) * config.batch_size / (now - last_log_time)
                last_log_time, last_log_step = now, step
                if skip_limit:
                    summary["skipped_steps"] = int(jax.device_get(skipped_step_counts(state.opt_state)[1]))
                writer.write(step, summary)
                if "loss" in summary:
                    bar.set_postfix(loss=f"{summary['loss']:.3f}", lr=f"{summary['learning_rate']:.1e}")

            if config.eval_every and step % config.eval_every == 0 and step != config.num_steps and not preempted:
                results = task.evaluate(state.params, data, config, config.eval.during_training_split)
                writer.write(step, {f"eval/{k}": v for k, v in results.items()})

            if step % config.checkpoint_every == 0 or final:
                checkpointer.save(step, state, train_iter, config_to_json(config))
            if preempted:
                preempted_at = step
                break
    finally:
        # Also on an error: the handlers go back, and a save already under way (of steps that
        # passed the NaN check) is completed rather than left half-written.
        preemption.restore()
        bar.close()
        try:
            checkpointer.wait()  # a save that failed to write raises here (CheckpointSaveFailed)
        finally:
            checkpointer.close()
    if preempted_at is not None:
        # Every process says so: in a multi-process run each one's log shows where it stopped.
        who = f"Process {jax.process_index()} stopped" if jax.process_count() > 1 else "Stopped"
        print(f"{who} after step {preempted_at} ({preemption.received}); its checkpoint is saved in "
              f"{checkpointer.directory}. Run the same command again to resume.")
        return None
    if last_step < config.num_steps:
        return None

    # --- Evaluate and report ----------------------------------------------------------------------
    results, details = task.evaluate(state.params, data, config, config.eval.split, return_details=True)
    writer.write(config.num_steps, {f"eval/{k}": v for k, v in results.items()})
    if is_main:
        task.report(workdir, results, details, config)
        plot_training_curves(os.path.join(workdir, "metrics.jsonl"), os.path.join(workdir, "loss_curve.png"))
    return results

