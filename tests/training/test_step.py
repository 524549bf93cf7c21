"""The compiled train step: 8-way data parallel equals 1 device; the optimizer masks decay."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mmjax.training import sharding as shd
from mmjax.training.setup import setup_training
from mmjax.training.optimizer import make_optimizer, make_schedule, weight_decay_mask
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
    # FSDP alone (slow) is also part of the DP 2 x FSDP 2 x TP 2 layout.
    [{"data": 8}, pytest.param({"fsdp": 8}, marks=pytest.mark.slow), {"data": 2, "fsdp": 2, "tensor": 2},
     pytest.param({"data": 4, "tensor": 2}, marks=pytest.mark.slow)],
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


def vqa_task_and_batch(batch_size=32):
    from mmjax.models.fusion import LateFusionClassifier
    from mmjax.models.text import TextTransformer
    from mmjax.models.vit import ViT
    from mmjax.training.vqa_task import VqaTask

    model = LateFusionClassifier(
        image_encoder=ViT(patch_size=8, width=32, depth=2, num_heads=2, mlp_dim=64, pool="mean"),
        text_encoder=TextTransformer(vocab_size=30, max_len=8, width=32, depth=1, num_heads=2, mlp_dim=64),
        num_answers=7,
    )
    base = random_batch(11, batch_size)
    rng = np.random.default_rng(12)
    batch = {"images": base["images"], "question_ids": base["token_ids"],
             "answer": rng.integers(0, 7, batch_size).astype(np.int32),
             "question_type": np.zeros(batch_size, np.int32)}
    return VqaTask(model), batch


def grads_with_microbatches(task, params, batch, num_microbatches, mesh):
    from mmjax.training.step import loss_and_grads

    fn = jax.jit(lambda p, b: loss_and_grads(task, p, b, jax.random.key(5), num_microbatches))
    with jax.set_mesh(mesh):
        return fn(params, shd.to_global_batch(batch, mesh))


def assert_trees_close(a, b, rtol=1e-5):
    """Leaf by leaf within rtol, with an absolute floor of rtol x the tree's largest entry: float32
    sums in another order differ by ~1e-7 of the magnitudes summed, and some gradients are zero
    up to that noise (a key bias cannot change a softmax)."""
    scale = max(float(np.abs(np.asarray(y)).max()) for y in jax.tree.leaves(b))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=rtol * scale)


def test_gradient_accumulation_of_a_per_example_loss_equals_the_big_batch():
    task, batch = vqa_task_and_batch()
    mesh = shd.make_mesh(8)
    params = nn.unbox(jax.jit(task.init)(jax.random.key(0), batch))
    (loss1, metrics1), grads1 = grads_with_microbatches(task, params, batch, 1, mesh)
    (loss4, metrics4), grads4 = grads_with_microbatches(task, params, batch, 4, mesh)
    np.testing.assert_allclose(float(loss4), float(loss1), rtol=1e-5)
    np.testing.assert_allclose(float(metrics4["vqa_accuracy"]), float(metrics1["vqa_accuracy"]), rtol=1e-6)
    assert_trees_close(grads4, grads1)
    assert optax.global_norm(grads1) > 0


def test_microbatches_are_strided_so_every_device_gets_a_share():
    from mmjax.training.step import merge_microbatches, split_microbatches

    x = {"a": np.arange(12)}
    micro = split_microbatches(x, 3)
    np.testing.assert_array_equal(micro["a"][1], [1, 4, 7, 10])
    np.testing.assert_array_equal(merge_microbatches(micro)["a"], x["a"])


def test_grad_accum_steps_must_divide_the_batch_over_the_shards():
    config = tiny_config(batch_size=16)
    config.grad_accum_steps = 4  # microbatches of 4 rows cannot split over 8 devices
    with pytest.raises(ValueError, match="config.grad_accum_steps=4 must be >= 1 and split"):
        setup_training(config, shd.make_mesh(8))


@pytest.mark.parametrize(
    "remat",
    # Slow: the default run compiles remat=True in the ViT-B/16 step (test_setup.py).
    [pytest.param(True, marks=pytest.mark.slow),
     pytest.param(jax.checkpoint_policies.dots_with_no_batch_dims_saveable, marks=pytest.mark.slow)],
    ids=["full", "save-dots"],
)
def test_remat_policies_recompute_the_same_gradients(remat):
    task = ContrastiveTask.from_config(tiny_config())
    remat_config = tiny_config()
    remat_config.model.image.remat = remat
    remat_config.model.text.remat = remat
    remat_task = ContrastiveTask.from_config(remat_config)
    batch = random_batch(21)
    params = nn.unbox(jax.jit(task.init)(jax.random.key(0), batch))

    def grads(t):
        return jax.jit(jax.grad(lambda p: t.loss(p, batch, jax.random.key(1))[0]))(params)

    assert_trees_close(grads(remat_task), grads(task))
    # The rematerialised program really recomputes: it has a checkpoint (remat) primitive.
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda p: remat_task.loss(p, batch, jax.random.key(1))[0]))(params))
    assert "remat" in jaxpr or "checkpoint" in jaxpr


def test_bfloat16_compute_keeps_float32_parameters_optimizer_state_and_losses(one_device_run):
    """The mixed-precision policy: matmuls in bfloat16, everything that accumulates in float32."""
    batches, (_, losses_f32) = one_device_run
    config = tiny_config()
    config.model.image.dtype = jnp.bfloat16
    config.model.text.dtype = jnp.bfloat16
    state_bf16, losses_bf16 = run_steps(1, batches, config)
    for leaf in jax.tree.leaves((state_bf16.params, state_bf16.opt_state)):
        assert leaf.dtype in (jnp.float32, jnp.int32), leaf.dtype
    np.testing.assert_allclose(losses_bf16, losses_f32, rtol=3e-2)
    assert losses_bf16 != losses_f32  # the compute really was in bfloat16

    task = ContrastiveTask.from_config(config)
    params = jax.device_get(state_bf16.params)
    jaxpr = jax.make_jaxpr(lambda p: task.loss(p, batches[0], jax.random.key(0), False))(params)
    eqns = [e for e in jaxpr.jaxpr.eqns]

    def all_eqns(eqns):
        for e in eqns:
            yield e
            for sub in jax.core.jaxprs_in_params(e.params):
                yield from all_eqns(sub.eqns)

    dots = [e for e in all_eqns(eqns) if e.primitive.name == "dot_general"]
    bf16_dots = [e for e in dots if all(v.aval.dtype == jnp.bfloat16 for v in e.invars)]
    # Every tower matmul runs in bfloat16 (the attention logits and the loss's similarity matrix
    # are computed in float32 on purpose).
    assert len(bf16_dots) >= 8, (len(bf16_dots), len(dots))
    exps = [e for e in all_eqns(eqns) if e.primitive.name == "exp"]
    assert exps and all(e.invars[0].aval.dtype == jnp.float32 for e in exps)  # softmaxes in float32


# Both slow (about 25 s each): the CLIP loss's accumulation runs, end to end and compared with the
# big batch, in the config test below, and the per-example one in the test above.
@pytest.mark.parametrize("loss_name", [pytest.param("sharded_clip_loss", marks=pytest.mark.slow),
                                       pytest.param("sharded_siglip_loss", marks=pytest.mark.slow)])
def test_gradient_accumulation_of_a_contrastive_loss_equals_the_big_batch(loss_name):
    """Microbatches of 8 for a batch of 32: the negatives still come from all 32 examples."""
    import mmjax.losses

    config = tiny_config(batch_size=32)
    config.contrastive_loss = getattr(mmjax.losses, loss_name)
    if loss_name == "sharded_siglip_loss":
        config.model.logit_bias_init = -10.0
    task = ContrastiveTask.from_config(config)
    batch = random_batch(31, batch_size=32)
    mesh = shd.make_mesh(8)
    params = nn.unbox(jax.jit(task.init)(jax.random.key(0), batch))
    (loss1, metrics1), grads1 = grads_with_microbatches(task, params, batch, 1, mesh)
    (loss4, metrics4), grads4 = grads_with_microbatches(task, params, batch, 4, mesh)
    np.testing.assert_allclose(float(loss4), float(loss1), rtol=1e-5)
    for name in metrics1:
        np.testing.assert_allclose(float(metrics4[name]), float(metrics1[name]), rtol=1e-5)
    assert_trees_close(grads4, grads1)
    # Microbatch-mean accumulation would not be the same objective: its loss differs.
    micro_mean = np.mean([float(task.loss(params, {k: v[i::4] for k, v in batch.items()}, jax.random.key(5))[0])
                          for i in range(4)])
    assert abs(micro_mean - float(loss1)) > 1e-3


def test_grad_accum_steps_in_the_config_trains_like_the_big_batch(one_device_run):
    batches, (state1, losses1) = one_device_run
    config = tiny_config()
    config.grad_accum_steps = 2
    state2, losses2 = run_steps({"data": 4, "fsdp": 2}, batches, config)
    np.testing.assert_allclose(losses2, losses1, rtol=1e-5)
    assert_trees_close(state2.params, state1.params)


# Slow (two compiles, ~30 s): freezing itself stays in the default run through the LiT tests.
@pytest.mark.slow
def test_logged_gradient_norm_leaves_out_frozen_parameters():
    from mmjax.training.freeze import trained_only
    from mmjax.training.step import loss_and_grads

    config = tiny_config()
    config.freeze = ("^image_encoder/", "^image_projection/")
    mesh = shd.make_mesh(1)
    task, _, init_fn, _, train_step = setup_training(config, mesh)
    state = init_fn()
    batch = random_batch(41)
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    _, grads = loss_and_grads(task, state.params, shd.to_global_batch(batch, mesh), rng)
    trained_norm = float(optax.global_norm(trained_only(grads, config.freeze)))
    assert trained_norm < float(optax.global_norm(grads))
    _, metrics = train_step(state, shd.to_global_batch(batch, mesh))
    np.testing.assert_allclose(float(metrics["grad_norm"]), trained_norm, rtol=1e-5)


def test_learning_rate_multipliers_scale_the_updates_of_matched_parameters_only():
    """lr_mults (big_vision's): the first matching regex's multiplier scales that parameter's
    AdamW update (its decay included); others get the plain update; a typo is an error."""
    rng = np.random.default_rng(14)
    params = {
        "encoder": {"relative_position_bias": jnp.asarray(rng.standard_normal((2, 9)), jnp.float32),
                    "dense": {"kernel": jnp.asarray(rng.standard_normal((3, 4)), jnp.float32)}},
        "head": {"kernel": jnp.asarray(rng.standard_normal((4, 2)), jnp.float32)},
    }
    grads = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), jnp.float32), params)
    schedule = make_schedule(1e-3, 2, 10)

    def first_updates(**kwargs):
        optimizer = make_optimizer(schedule, weight_decay=0.1, grad_clip_norm=None, **kwargs)
        state = optimizer.init(params)
        for _ in range(3):  # past the zero learning rate of step 0
            updates, state = optimizer.update(grads, state, params)
        return updates

    plain = first_updates()
    scaled = first_updates(lr_mults=(("relative_position_bias", 10.0), ("kernel$", 0.5), ("^head/", 3.0)))
    np.testing.assert_allclose(scaled["encoder"]["relative_position_bias"],
                               10.0 * plain["encoder"]["relative_position_bias"], rtol=1e-6)
    # First match wins: the head's kernel is matched by "kernel$" before "^head/".
    for path in (("encoder", "dense", "kernel"), ("head", "kernel")):
        a, b = scaled, plain
        for key in path:
            a, b = a[key], b[key]
        np.testing.assert_allclose(a, 0.5 * b, rtol=1e-6)
    assert np.abs(plain["encoder"]["relative_position_bias"]).min() > 0
    # Without multipliers the chain (and so a checkpoint's optimizer state) is as before.
    no_mults = make_optimizer(schedule, grad_clip_norm=None).init(params)
    assert jax.tree.structure(no_mults) == jax.tree.structure(make_optimizer(schedule, grad_clip_norm=None, lr_mults=()).init(params))
    with pytest.raises(ValueError, match="'relative_bias' matches no parameter"):
        make_optimizer(schedule, lr_mults=(("relative_bias", 10.0),)).init(params)
    with pytest.raises(ValueError, match=r"\(regex, multiplier\)"):
        make_optimizer(schedule, lr_mults=(("kernel", "ten"),)).init(params)
    with pytest.raises(ValueError, match=r"pairs, e.g.*entry 'kernel' of \('kernel', 2.0\)"):  # a pair, not pairs
        make_optimizer(schedule, lr_mults=("kernel", 2.0)).init(params)
    with pytest.raises(ValueError, match=r"config.optimizer.lr_mults pattern '\(kernel' is not a valid regular"):
        make_optimizer(schedule, lr_mults=(("(kernel", 2.0),)).init(params)
