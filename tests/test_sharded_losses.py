"""The sharded contrastive losses against their unsharded formulas, on the 8 forced CPU devices.

`sharded_clip_loss` and `sharded_siglip_loss` must give the loss, the gradients (embeddings,
scale, bias) and the accuracies of `clip_loss` / `siglip_loss` on the gathered batch, for every
way the trainer's (data, fsdp, tensor) mesh can split the batch; the chunked sigmoid loss must
never hold the global batch × batch matrix on a device; without a mesh both are the plain formula.
"""

import math
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mmjax.losses import (
    batch_shards,
    clip_loss,
    sharded_clip_loss,
    sharded_siglip_loss,
    siglip_loss,
)
from mmjax.training.tasks import ContrastiveTask

MESH_AXES = ("data", "fsdp", "tensor")
# data parallel, fsdp, all three axes, and data parallel with a tensor axis holding a replica
MESH_SHAPES = [(8, 1, 1), (1, 8, 1), (2, 2, 2), (4, 1, 2)]


def make_mesh(shape):
    return Mesh(np.asarray(jax.devices()).reshape(shape), MESH_AXES)


def unit(rows):
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def embedding_pairs(seed, batch=32, dim=16, noise=0.5):
    """Fresh unit-norm (images, texts) where text i is a noisy copy of image i: neither aligned
    nor random, so the accuracies land strictly between 0 and 1 and a mix-up of rows shows."""
    rng = np.random.default_rng(seed)
    images = unit(rng.standard_normal((batch, dim)))
    texts = unit(images + noise * rng.standard_normal((batch, dim)))
    return images, texts


def value_and_grads(loss_fn, num_args):
    """jit(loss, metrics, gradients w.r.t. every argument)."""
    return jax.jit(jax.value_and_grad(loss_fn, argnums=tuple(range(num_args)), has_aux=True))


def uses_shard_map(fn, *args):
    return "shard_map" in str(jax.make_jaxpr(fn)(*args))


def assert_same(sharded, reference, atol=1e-5):
    (loss, metrics), grads = sharded
    (ref_loss, ref_metrics), ref_grads = reference
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5, atol=atol)
    for got, want in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=atol)
    assert set(metrics) == set(ref_metrics) == {"i2t_accuracy", "t2i_accuracy"}
    for name in metrics:
        assert float(metrics[name]) == float(ref_metrics[name]), name
        assert 0.0 < float(ref_metrics[name]) < 1.0, "the test needs a non-trivial accuracy"


# ------------------------------------------------------------------------------------------------
# Equality with the unsharded formulas, on every mesh shape.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", MESH_SHAPES, ids=str)
def test_sharded_siglip_loss_and_gradients_equal_siglip_loss(shape):
    mesh = make_mesh(shape)
    images, texts = embedding_pairs(seed=sum(shape))
    args = (images, texts, jnp.float32(10.0), jnp.float32(-10.0))  # SigLIP's initial scale and bias

    def sharded(*a):
        return sharded_siglip_loss(*a, mesh=mesh)

    assert uses_shard_map(sharded, *args)
    assert_same(value_and_grads(sharded, 4)(*args), value_and_grads(siglip_loss, 4)(*args))
    # and away from the initialisation, where the positives matter as much as the negatives
    args = (images, texts, jnp.float32(3.5), jnp.float32(0.7))
    assert_same(value_and_grads(sharded, 4)(*args), value_and_grads(siglip_loss, 4)(*args))


@pytest.mark.parametrize("shape", MESH_SHAPES, ids=str)
def test_sharded_clip_loss_and_gradients_equal_clip_loss(shape):
    mesh = make_mesh(shape)
    images, texts = embedding_pairs(seed=10 + sum(shape))
    args = (images, texts, jnp.float32(14.3))

    def sharded(*a):
        return sharded_clip_loss(*a, mesh=mesh)

    assert uses_shard_map(sharded, *args)
    assert_same(value_and_grads(sharded, 3)(*args), value_and_grads(clip_loss, 3)(*args))


@pytest.mark.parametrize("loss_name", ["siglip", "clip"])
def test_the_context_mesh_is_used_and_inputs_in_any_layout_are_resharded(loss_name):
    """The train step's way: traced under `jax.set_mesh`, no mesh argument, embeddings that
    arrive replicated (the shard_map reshards them to the batch split)."""
    mesh = make_mesh((2, 2, 2))
    images, texts = embedding_pairs(seed=3)
    sharded, plain = {
        "siglip": (sharded_siglip_loss, siglip_loss),
        "clip": (lambda x, y, s, b: sharded_clip_loss(x, y, s), lambda x, y, s, b: clip_loss(x, y, s)),
    }[loss_name]
    replicated = NamedSharding(mesh, PartitionSpec())
    args = (*jax.device_put((images, texts), replicated), jnp.float32(5.0), jnp.float32(-2.0))
    with jax.set_mesh(mesh):
        assert uses_shard_map(sharded, *args)
        result = value_and_grads(sharded, 4)(*args)
    assert_same(result, value_and_grads(plain, 4)(images, texts, jnp.float32(5.0), jnp.float32(-2.0)))


def test_accuracy_ties_go_to_the_lower_index_as_in_argmax():
    """Duplicated texts tie exactly; the ring's running argmax must break ties like jnp.argmax
    over the whole row (first index), or the sharded accuracy drifts from the unsharded one."""
    mesh = make_mesh((8, 1, 1))
    images, texts = embedding_pairs(seed=5)
    texts = np.concatenate([texts[:16], texts[:16]])  # text j + 16 equals text j: ties across devices
    images = np.concatenate([images[:16], images[:16]])
    _, metrics = jax.jit(lambda *a: sharded_siglip_loss(*a, mesh=mesh))(images, texts, 10.0, -10.0)
    _, want = jax.jit(siglip_loss)(images, texts, 10.0, -10.0)
    assert float(want["i2t_accuracy"]) <= 0.5  # the second copies lose every tie
    assert {k: float(v) for k, v in metrics.items()} == {k: float(v) for k, v in want.items()}


# ------------------------------------------------------------------------------------------------
# Memory: the chunked loss holds one [B/n, B/n] block, never [B, B] (nor [B/n, B]).
# ------------------------------------------------------------------------------------------------


def largest_array_in_compiled_step(loss_fn, images, texts):
    """The largest array (in elements) in the optimised per-device program of loss + gradients."""
    loss_and_grads = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True))
    compiled = loss_and_grads.lower(images, texts).compile()
    shapes = re.findall(r"\b(?:f32|f64|s32|u32|pred)\[([\d,]*)\]", compiled.as_text())
    sizes = {tuple(int(d) for d in shape.split(",") if d) for shape in shapes}
    return max(sizes, key=math.prod)


def test_chunked_sigmoid_loss_never_holds_the_global_similarity_matrix():
    batch, devices = 256, 8
    block = batch // devices
    mesh = make_mesh((devices, 1, 1))
    rng = np.random.default_rng(0)
    # dim 2, so the embeddings ([256, 2]) are smaller than one [32, 32] block
    images, texts = unit(rng.standard_normal((batch, 2))), unit(rng.standard_normal((batch, 2)))

    chunked = largest_array_in_compiled_step(
        lambda x, y: sharded_siglip_loss(x, y, 10.0, -10.0, mesh=mesh), images, texts
    )
    assert math.prod(chunked) == block * block, chunked

    # the measurement sees the matrices it must rule out: [B, B] unsharded, [B/n, B] gathered
    unsharded = largest_array_in_compiled_step(lambda x, y: siglip_loss(x, y, 10.0, -10.0), images, texts)
    assert unsharded == (batch, batch)
    gathered = largest_array_in_compiled_step(
        lambda x, y: sharded_clip_loss(x, y, 10.0, mesh=mesh), images, texts
    )
    assert math.prod(gathered) == block * batch, gathered


# ------------------------------------------------------------------------------------------------
# Without a mesh (evaluation, unit tests) and with nothing to split: the plain formula.
# ------------------------------------------------------------------------------------------------


def test_without_a_mesh_the_sharded_losses_are_the_plain_formulas():
    assert jax.sharding.get_abstract_mesh().empty
    images, texts = embedding_pairs(seed=7)
    assert batch_shards().count == 1
    assert not uses_shard_map(sharded_siglip_loss, images, texts, 10.0, -10.0)
    assert not uses_shard_map(sharded_clip_loss, images, texts, 10.0)
    assert_same(value_and_grads(sharded_siglip_loss, 4)(images, texts, 10.0, -10.0),
                value_and_grads(siglip_loss, 4)(images, texts, 10.0, -10.0), atol=0.0)
    assert_same(value_and_grads(sharded_clip_loss, 3)(images, texts, 10.0),
                value_and_grads(clip_loss, 3)(images, texts, 10.0), atol=0.0)


def test_batch_axes_of_size_one_or_absent_are_not_used():
    # only the tensor axis has devices: nothing splits the batch
    tensor_only = make_mesh((1, 1, 8))
    assert batch_shards(tensor_only) == (tensor_only, (), 1)
    images, texts = embedding_pairs(seed=8)
    args = (images, texts, 10.0, -10.0)
    assert not uses_shard_map(lambda *a: sharded_siglip_loss(*a, mesh=tensor_only), *args)
    # a mesh without an fsdp axis, and size-1 axes skipped
    data_only = Mesh(np.asarray(jax.devices()).reshape(4, 2), ("data", "tensor"))
    assert batch_shards(data_only) == (data_only, ("data",), 4)
    assert batch_shards(make_mesh((1, 4, 2))).axes == ("fsdp",)
    assert batch_shards(make_mesh((2, 2, 2)), axis_names=("fsdp",)).count == 2

    def sharded(*a):
        return sharded_siglip_loss(*a, mesh=data_only)

    assert uses_shard_map(sharded, images, texts, 10.0, -10.0)
    assert_same(value_and_grads(sharded, 4)(images, texts, 10.0, -10.0),
                value_and_grads(siglip_loss, 4)(images, texts, 10.0, -10.0))


def test_a_batch_that_does_not_split_evenly_is_named():
    images, texts = embedding_pairs(seed=9, batch=12)
    with pytest.raises(ValueError, match=r"a batch of 12 does not split evenly over the 8 devices"):
        sharded_siglip_loss(images, texts, 10.0, -10.0, mesh=make_mesh((8, 1, 1)))


# ------------------------------------------------------------------------------------------------
# ContrastiveTask: the config picks the loss; the bias and the loss must agree.
# ------------------------------------------------------------------------------------------------


def tiny_clip_config(**model_fields):
    config = ml_collections.ConfigDict()
    config.data = dict(image_size=16, text_len=8)
    config.model = dict(
        embed_dim=16,
        image=dict(patch_size=8, width=16, depth=1, num_heads=2, mlp_dim=32, pool="mean"),
        text=dict(vocab_size=30, max_len=8, width=16, depth=1, num_heads=2, mlp_dim=32),
        **model_fields,
    )
    return config


def test_task_uses_the_configured_sigmoid_loss_sharded_under_the_mesh():
    config = tiny_clip_config(logit_scale_init=math.log(10.0), logit_bias_init=-10.0)
    config.contrastive_loss = sharded_siglip_loss
    task = ContrastiveTask.from_config(config)
    rng = np.random.default_rng(0)
    batch = {
        "images": rng.integers(0, 256, (16, 16, 16, 3)).astype(np.uint8),
        "token_ids": rng.integers(3, 30, (16, 8)).astype(np.int32),
    }
    params = jax.jit(task.init)(jax.random.key(0), batch)
    assert float(params["logit_bias"]) == -10.0

    def loss(params, batch):
        return task.loss(params, batch, jax.random.key(1), train=False)

    plain_loss, plain_metrics = jax.jit(loss)(params, batch)
    with jax.set_mesh(make_mesh((4, 1, 2))):
        assert uses_shard_map(loss, params, batch)
        mesh_loss, mesh_metrics = jax.jit(loss)(params, batch)
    np.testing.assert_allclose(float(mesh_loss), float(plain_loss), rtol=1e-5)
    # the learnable scalars are logged next to the accuracies
    assert float(mesh_metrics["logit_scale"]) == pytest.approx(10.0)
    assert float(mesh_metrics["logit_bias"]) == -10.0
    logged = {"i2t_accuracy", "t2i_accuracy", "logit_scale", "logit_bias"}
    assert set(mesh_metrics) == set(plain_metrics) == logged


def test_task_defaults_to_the_clip_loss_without_a_bias():
    task = ContrastiveTask.from_config(tiny_clip_config())
    assert task.contrastive_loss is sharded_clip_loss


def test_task_rejects_a_loss_and_a_model_that_disagree_on_the_bias():
    config = tiny_clip_config()
    config.contrastive_loss = sharded_siglip_loss
    needs_bias = r"config.contrastive_loss = sharded_siglip_loss .* config.model.logit_bias_init is not set"
    with pytest.raises(ValueError, match=needs_bias):
        ContrastiveTask.from_config(config)
    config = tiny_clip_config(logit_bias_init=-10.0)
    config.contrastive_loss = clip_loss
    unused_bias = r"config.model.logit_bias_init is set but config.contrastive_loss = clip_loss"
    with pytest.raises(ValueError, match=unused_bias):
        ContrastiveTask.from_config(config)

