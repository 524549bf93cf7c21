"""Evaluate the latest checkpoint of a run folder (what `eval.py` runs)."""

from __future__ import annotations

import os
from typing import Any

import ml_collections

from mmjax.data.prepare import prepare_shapes
from mmjax.training import sharding as shd
from mmjax.training.checkpoint import Checkpointer
from mmjax.training.setup import setup_training


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    step = checkpointer.latest_step()
    if step is None:
        raise FileNotFoundError(
            f"no checkpoint in {checkpointer.directory}: train first with "
            f"`python train.py --config ... --workdir {workdir}`"
        )
    run_tokenizer = os.path.join(workdir, "tokenizer.model")
    data = prepare_shapes(config.data, build_if_missing=False,
                          tokenizer_path=run_tokenizer if os.path.exists(run_tokenizer) else None)
    mesh = shd.make_mesh(config.mesh)
    task, _, _, abstract_state, _ = setup_training(config, mesh)
    state = checkpointer.restore(abstract_state, data_iterator=None, step=step)
    checkpointer.close()
    print(f"Evaluating step {step} of {workdir} on shapes/{config.eval.split}.")
    results, details = task.evaluate(state.params, data, config, config.eval.split, return_details=True)
    task.report(workdir, {"step": step, **results}, details, config)
    return results
