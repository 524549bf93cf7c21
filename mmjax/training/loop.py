"""The training loop: one flat function in commented stages, for every task.

    set up the run folder -> prepare data -> build mesh, task, optimizer -> create or restore the
    state -> loop { next batch -> compiled step -> (every N) log, evaluate, checkpoint } ->
    final checkpoint -> evaluate -> results table, results.json, plots

The host never waits for the device inside the loop except every `log_every` steps, when it fetches
the metrics of the steps since the last log (and checks them for NaN). Batches are prepared by
loader threads while the device computes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from mmjax.data.prepare import prepare_shapes
from mmjax.data.pipeline import make_train_loader
from mmjax.evaluation.report import plot_training_curves, write_text_atomically
from mmjax.training import sharding as shd
from mmjax.training.checkpoint import Checkpointer
from mmjax.training.metric_writer import MetricWriter
from mmjax.training.setup import config_to_json, setup_training
from mmjax.training.state import count_params


def _mean_metrics(pending: list[dict]) -> dict[str, float]:
    """Averages the device metrics of the steps since the last log (one host transfer)."""
    fetched = jax.device_get(pending)
    return {name: float(np.mean([m[name] for m in fetched])) for name in fetched[0]}


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, stop_after: int | None = None
) -> dict[str, Any] | None:
    """Trains `config` in `workdir` (resuming if it holds checkpoints), evaluates, writes artifacts.

    `stop_after` ends the run after that step with a checkpoint and no evaluation, exactly as an
    interrupted run would end; calling again resumes it. Returns the final evaluation results
    (None when stopped early).
    """
    is_main = jax.process_index() == 0
    # --- Set up the run folder -------------------------------------------------------------------
    os.makedirs(workdir, exist_ok=True)
    if is_main:
        write_text_atomically(os.path.join(workdir, "config.json"), config_to_json(config))

    # --- Data: build the dataset and tokenizer if missing, then the training iterator -----------
    # A run keeps its tokenizer in the run folder: a resumed run reads text exactly as before.
    run_tokenizer = os.path.join(workdir, "tokenizer.model")
    data = prepare_shapes(config.data, tokenizer_path=run_tokenizer if os.path.exists(run_tokenizer) else None)
    if is_main and data.tokenizer_path != run_tokenizer:
        shutil.copyfile(data.tokenizer_path, run_tokenizer)

    # --- Mesh, task, optimizer, state ------------------------------------------------------------
    mesh = shd.make_mesh(config.mesh.data)
    task, schedule, init_fn, abstract_state, train_step = setup_training(config, mesh)
    local_batch_size = config.batch_size // jax.process_count()
    train_iter = make_train_loader(
        data.split("train"),
        task.train_preprocess(data, config),
        batch_size=local_batch_size,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        num_threads=config.data.num_threads,
    )

    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints)
    if checkpointer.latest_step() is not None:
        state = checkpointer.restore(abstract_state, train_iter)
        print(f"Resumed from {checkpointer.directory} at step {int(state.step)}.")
    else:
        state = init_fn()
    start_step = int(state.step)
    if is_main:
        print(f"Model: {count_params(state.params):,} parameters; mesh {dict(mesh.shape)}; "
              f"global batch {config.batch_size}.")

    # --- Train ------------------------------------------------------------------------------------
    writer = MetricWriter(workdir)
    pending: list[dict] = []
    bar = tqdm(total=config.num_steps, initial=start_step, desc="train", unit="step",
               disable=not is_main, dynamic_ncols=True)
    last_log_time, last_log_step = time.perf_counter(), start_step
    last_step = config.num_steps if stop_after is None else min(stop_after, config.num_steps)
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

        # Checkpoint steps are logged too, so that no checkpoint is written before its steps'
        # metrics were checked for NaN.
        if step % config.log_every == 0 or step % config.checkpoint_every == 0 or step == last_step:
            summary = _mean_metrics(pending)
            pending = []
            now = time.perf_counter()
            summary["examples_per_sec"] = (step - last_log_step) * config.batch_size / (now - last_log_time)
            last_log_time, last_log_step = now, step
            bad = [k for k in ("loss", "grad_norm") if not math.isfinite(summary[k])]
            if bad:
                raise FloatingPointError(
                    f"{bad[0]} became {summary[bad[0]]} at step {step}; stopping before a corrupt "
                    "checkpoint is written. Lower the learning rate or check the data."
                )
            writer.write(step, summary)
            bar.set_postfix(loss=f"{summary['loss']:.3f}", lr=f"{summary['learning_rate']:.1e}")

        if config.eval_every and step % config.eval_every == 0 and step != config.num_steps:
            results = task.evaluate(state.params, data, config, config.eval.during_training_split)
            writer.write(step, {f"eval/{k}": v for k, v in results.items()})

        if step % config.checkpoint_every == 0 or step == last_step:
            checkpointer.save(step, state, train_iter, config_to_json(config))
    bar.close()
    checkpointer.wait()
    checkpointer.close()
    if last_step < config.num_steps:
        writer.close()
        return None

    # --- Evaluate and report ----------------------------------------------------------------------
    results, details = task.evaluate(state.params, data, config, config.eval.split, return_details=True)
    writer.write(config.num_steps, {f"eval/{k}": v for k, v in results.items()})
    writer.close()
    if is_main:
        task.report(workdir, results, details, config)
        plot_training_curves(os.path.join(workdir, "metrics.jsonl"), os.path.join(workdir, "loss_curve.png"))
    return results

