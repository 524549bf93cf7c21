"""The compiled train step: 8-way data parallel equals 1 device; the optimizer masks decay."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmjax.training import sharding as shd
from mmjax.training.setup import setup_training
from mmjax.training.optimizer import make_schedule, weight_decay_mask
from mmjax.training.tasks import ContrastiveTask


def tiny_config(batch_size=16):
    config = ml_collections.ConfigDict()
    config.task = ContrastiveTask
    config.seed = 3
    config.data = dict(image_size=16, text_len=8)
    config.model = dict(
        embed_dim=16,
        image=dict(patch_size=8, width=32, depth=2, num_heads=2, mlp_dim=64, pool="mean"),
        text=dict(vocab_size=30, max_len=8, width=32, depth=2, num_heads=2, mlp_dim=64),
    )
    config.batch_size = batch_size
    config.num_steps = 50
    config.optimizer = dict(learning_rate=1e-3, end_learning_rate=0.0, warmup_steps=2, weight_decay=0.1,
                            b1=0.9, b2=0.98, eps=1e-6, grad_clip_norm=1.0)
    return ml_collections.ConfigDict(config)


def random_batch(seed, batch_size=16):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, 30, (batch_size, 8)).astype(np.int32)
    ids[:, 6:] = 0
    ids[:, 5] = 2
    return {"images": rng.integers(0, 256, (batch_size, 16, 16, 3)).astype(np.uint8), "token_ids": ids}


def run_steps(mesh_config, batches, config=None):
    mesh = shd.make_mesh(mesh_config)
    _, _, init_fn, _, train_step = setup_training(config or tiny_config(), mesh)
    state = init_fn()
    losses = []
    for batch in batches:
        state, metrics = train_step(state, shd.to_global_batch(batch, mesh))
        losses.append(float(metrics["loss"]))
    return state, losses


@pytest.fixture(scope="module")
def one_device_run():
    batches = [random_batch(s) for s in range(3)]
    return batches, run_steps(1, batches)


@pytest.mark.parametrize(
    "mesh_config",
    [{"data": 8}, {"fsdp": 8}, {"data": 2, "fsdp": 2, "tensor": 2}, {"data": 4, "tensor": 2}],
    ids=["dp8", "fsdp8", "dp2-fsdp2-tp2", "dp4-tp2"],
)
def test_parallel_layouts_equal_one_device(one_device_run, mesh_config):
    """Data, fully sharded and tensor parallelism change where numbers live, not what they are."""
    assert jax.device_count() == 8, "tests/conftest.py forces 8 host devices"
    batches, (state1, losses1) = one_device_run
    state8, losses8 = run_steps(mesh_config, batches)
    np.testing.assert_allclose(losses8, losses1, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(state1.params), jax.tree.leaves(state8.params)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(state1.opt_state), jax.tree.leaves(state8.opt_state)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)
    # The state really is laid out on all 8 devices, and each device holds the fraction of a
    # sharded weight that the layout says.
    fc1 = state8.params["image_encoder"]["encoder"]["blocks"]["mlp"]["fc1"]["kernel"]  # [2, 32, 64]
    assert len(fc1.sharding.device_set) == 8
    ways = mesh_config.get("fsdp", 1) * mesh_config.get("tensor", 1)
    assert fc1.addressable_shards[0].data.size == fc1.size // ways
    assert losses1[-1] != losses1[0]


def test_batch_is_split_over_the_data_axis():
    mesh = shd.make_mesh(8)
    batch = shd.to_global_batch(random_batch(0), mesh)
    shards = batch["images"].addressable_shards
    assert len(shards) == 8 and shards[0].data.shape == (2, 16, 16, 3)


def test_batch_size_not_divisible_is_named():
    with pytest.raises(ValueError, match="config.batch_size=12 is not divisible by the 8 devices"):
        setup_training(tiny_config(batch_size=12), shd.make_mesh(8))
    with pytest.raises(ValueError, match="config.mesh.data=3"):
        shd.make_mesh(3)


def test_weight_decay_mask_only_on_kernels():
    params = {"dense": {"kernel": 1, "bias": 2}, "ln": {"scale": 3}, "logit_scale": 4,
              "embed": {"embedding": 5}, "cls_token": 6}
    mask = weight_decay_mask(params)
    assert mask == {"dense": {"kernel": True, "bias": False}, "ln": {"scale": False},
                    "logit_scale": False, "embed": {"embedding": False}, "cls_token": False}


def test_schedule_warms_up_then_decays():
    schedule = make_schedule(1.0, warmup_steps=10, total_steps=110, end_learning_rate=0.0)
    assert float(schedule(0)) == 0.0
    np.testing.assert_allclose(float(schedule(5)), 0.5, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(10)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(60)), 0.5, rtol=1e-5)
    assert float(schedule(110)) < 1e-6
    with pytest.raises(ValueError, match="num_steps=5 must exceed"):
        make_schedule(1.0, warmup_steps=10, total_steps=5)


def test_config_without_a_task_class_is_named():
    for task in ("clip", None):
        config = ml_collections.ConfigDict({**tiny_config().to_dict(), "task": task})
        with pytest.raises(ValueError, match="config.task must name a task class"):
            setup_training(config, shd.make_mesh(1))
