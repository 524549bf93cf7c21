"""Ahead-of-time compilation of the real configs' train steps on abstract inputs.

`jax.jit(step).lower(abstract_state, abstract_batch).compile()` proves that shapes, dtypes and
shardings fit together for a config without allocating its parameters or running it: the way to
check a TPU-pod config on a laptop.
"""

import jax
import numpy as np
import pytest

from configs import clip_b16, clip_small, clip_tiny
from mmjax.training import sharding as shd
from mmjax.training.setup import setup_training
from mmjax.training.state import count_params
from mmjax.training.tasks import ContrastiveTask


def lower_and_compile(config, mesh_config=8):
    mesh = shd.make_mesh(mesh_config)
    task, _, _, abstract_state, train_step = setup_training(config, mesh)
    batch = {
        k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=shd.batch_sharding(mesh))
        for k, v in task.example_batch(config, config.batch_size).items()
    }
    return abstract_state, train_step.lower(abstract_state, batch).compile()


# Slow (about 35 s): the 12-layer ViT-B/16 step; the tiny configs' sharded steps compile and run in
# test_step.py, and bench/memory_plan.py compiles the big configs for 8 and 32 devices.
@pytest.mark.slow
def test_clip_b16_step_compiles_fully_sharded_on_an_8_device_mesh():
    config = clip_b16.get_config()
    abstract_state, compiled = lower_and_compile(config, {"fsdp": 8})
    # Exactly the parameter count of OpenAI's ViT-B/16 CLIP.
    assert count_params(abstract_state.params) == 149_620_737
    # Weights are split 8 ways along the model width (FSDP), and so is the batch.
    kernel = abstract_state.params["image_encoder"]["encoder"]["blocks"]["mlp"]["fc1"]["kernel"]
    assert kernel.shape == (12, 768, 3072) and kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")
    assert compiled.input_shardings[0][1]["images"].spec == jax.sharding.PartitionSpec(("data", "fsdp"))
    # The compiled step's inputs per device: 1/8 of parameters + Adam moments (3 x 4 bytes per
    # parameter; LayerNorms, biases and other small leaves stay whole) plus 1/8 of the batch.
    state_bytes = 3 * 4 * count_params(abstract_state.params)
    batch_bytes = sum(v.size * v.dtype.itemsize for v in
                      ContrastiveTask.example_batch(config, config.batch_size).values())
    per_device = compiled.memory_analysis().argument_size_in_bytes
    assert (state_bytes + batch_bytes) / 8 < per_device < 1.03 * (state_bytes + batch_bytes) / 8
    # Analytic count of the layers' matmul FLOPs for one step: 6 x (12 width² per layer) x tokens
    # (forward 2 FLOPs per multiply-add, backward twice that).
    image_tokens, text_tokens = 197, 77
    analytic = 6 * config.batch_size * (12 * 12 * 768**2 * image_tokens + 12 * 12 * 512**2 * text_tokens)
    # XLA's cost analysis is per device (1/8 of the batch) and counts a scanned layer's body once,
    # not once per layer: it must land between the per-device count of one layer and of all 12.
    flops = compiled.cost_analysis()["flops"]
    per_device = analytic / 8
    assert per_device / 12 < flops < per_device


@pytest.mark.parametrize("module", [clip_tiny, pytest.param(clip_small, marks=pytest.mark.slow)])
def test_small_configs_compile(module):
    _, compiled = lower_and_compile(module.get_config())
    assert compiled.cost_analysis()["flops"] > 0


def test_clip_l14_has_openai_vit_l14_parameters_and_fsdp_layout():
    from configs import clip_l14

    config = clip_l14.get_config()
    _, _, _, abstract_state, _ = setup_training(config, shd.make_mesh(config.mesh))
    assert count_params(abstract_state.params) == 427_616_513  # OpenAI's ViT-L/14 CLIP
    qkv = abstract_state.params["image_encoder"]["encoder"]["blocks"]["attn"]["query"]["kernel"]
    assert qkv.shape == (24, 1024, 16, 64) and qkv.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")
