"""Evaluate a checkpoint of a run folder (what `eval.py` runs): the latest, or the step asked for.

Evaluation takes no lock on the run folder (see `run_lock`): it reads a checkpoint and writes its
own result files atomically, so it can run while the run's training job goes on. That job may
delete the checkpoint being read (it keeps only the newest `keep_checkpoints`); the latest step is
then looked up again. A damaged checkpoint is never evaluated: the error names it, what is wrong,
and the intact steps that `--step` can take instead. Nothing in the run folder is moved or
deleted by an evaluation.
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections

from mmjax.data.prepare import prepare_data
from mmjax.training import sharding as shd
from mmjax.training.checkpoint import CheckpointDamaged, Checkpointer
from mmjax.training.library_logs import write_to_run_folder
from mmjax.training.run_lock import live_holder
from mmjax.training.setup import setup_training


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str, step: int | None = None) -> dict[str, Any]:
    """Evaluates checkpoint `step` (default: the latest) of `workdir` on `config.eval.split`."""
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    try:
        steps = checkpointer.all_steps()
        if not steps:
            raise FileNotFoundError(
                f"no checkpoint in {checkpointer.directory}: train first with "
                f"`python train.py --config ... --workdir {workdir}`"
            )
        if step is not None and step not in steps:
            raise FileNotFoundError(f"no checkpoint {step} in {checkpointer.directory}; it has steps "
                                    f"{', '.join(map(str, steps))}")
        write_to_run_folder(workdir)  # a run folder indeed: library logs (eval.py's) go to its logs/
        run_tokenizer = os.path.join(workdir, "tokenizer.model")
        data = prepare_data(config.data, build_if_missing=False,
                              tokenizer_path=run_tokenizer if os.path.exists(run_tokenizer) else None)
        mesh = shd.make_mesh(config.mesh)
        task, _, _, abstract_state, _ = setup_training(config, mesh)
        holder = live_holder(workdir)
        if holder is not None:
            print(f"Note: {workdir} is being trained by {holder.describe()}; evaluating the newest "
                  "checkpoint that is complete now.")
        step, state = _restore(checkpointer, abstract_state, step)
    finally:
        checkpointer.close()
    print(f"Evaluating step {step} of {workdir} on {data.name}/{config.eval.split}.")
    results, details = task.evaluate(state.params, data, config, config.eval.split, return_details=True)
    task.report(workdir, {"step": step, **results}, details, config)
    return results


def _restore(checkpointer: Checkpointer, abstract_state: Any, step: int | None, attempts: int = 3):
    """(step, state) of checkpoint `step`, or of the latest one, looked up again if a training job
    deletes it while it is read."""
    for _ in range(attempts):
        wanted = checkpointer.latest_step() if step is None else step
        try:
            return wanted, checkpointer.restore(abstract_state, None, wanted)
        except CheckpointDamaged as damage:
            checkpointer.manager.reload()
            if step is None and wanted not in checkpointer.all_steps():
                continue  # deleted by the training job (keep_checkpoints) while being read
            others = [s for s in checkpointer.all_steps() if s != wanted]
            intact = checkpointer.intact_steps(abstract_state, others)
            hint = (f"Intact checkpoints: {', '.join(map(str, intact))}; evaluate one with --step {intact[0]}."
                    if intact else "No other checkpoint is intact.")
            raise CheckpointDamaged(damage.directory, damage.step, f"{damage.reason}. {hint}") from None
    raise FileNotFoundError(f"the latest checkpoint in {checkpointer.directory} was deleted {attempts} times "
                            "while being read (a training job keeps replacing it); pass --step")


def load_run(workdir: str, config: ml_collections.ConfigDict):
    """(task, params, step, tokenizer) of the latest checkpoint of a run folder, restored as for
    evaluation, with the run's own tokenizer: what a command-line tool on a trained run needs."""
    from mmjax.data.tokenizer import Tokenizer

    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    try:
        step = checkpointer.latest_step()
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {checkpointer.directory}: train first with train.py")
        task, _, _, abstract_state, _ = setup_training(config, shd.make_mesh(config.mesh))
        params = checkpointer.restore(abstract_state, data_iterator=None, step=step).params
    finally:
        checkpointer.close()
    tokenizer_path = os.path.join(workdir, "tokenizer.model")
    if not os.path.exists(tokenizer_path):
        raise FileNotFoundError(f"{tokenizer_path} is missing: the run folder is incomplete")
    return task, params, step, Tokenizer.load(tokenizer_path)

