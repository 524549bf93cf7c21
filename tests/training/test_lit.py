"""LiT: frozen parameters (config.freeze) and pre-trained subtrees (config.init_from)."""

import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mmjax.training import sharding as shd
from mmjax.training.freeze import freeze_parameters, trained_only
from mmjax.training.loop import train_and_evaluate
from mmjax.training.optimizer import make_optimizer, skipped_step_counts
from mmjax.training.setup import setup_training
from tests.training.test_loop import assert_trees_equal, saved_params, tiny_config

FROZEN = ("image_encoder", "image_projection")


@pytest.fixture(scope="module")
def data_dir(prepared_data_dir):
    return prepared_data_dir


@pytest.fixture(scope="module")
def pretrained(data_dir, tmp_path_factory):
    """A tiny CLIP run on one device, stopped after 2 steps (with its checkpoint): the towers to
    start from."""
    workdir = str(tmp_path_factory.mktemp("clip"))
    config = tiny_config(data_dir, mesh=ml_collections.ConfigDict(dict(data=1)))
    train_and_evaluate(config, workdir, stop_after=2)
    return workdir, jax.device_get(saved_params(workdir, config).params)


def lit_config(data_dir, pretrained_workdir, **overrides):
    config = tiny_config(data_dir, **overrides)
    config.freeze = tuple(f"^{name}/" for name in FROZEN)
    config.init_from = ml_collections.ConfigDict(dict(workdir=pretrained_workdir, subtrees=FROZEN))
    return config


def test_fsdp_lit_run_keeps_the_loaded_tower_bit_identical_and_trains_the_rest(data_dir, pretrained, tmp_path):
    pretrained_workdir, pretrained_params = pretrained
    config = lit_config(data_dir, pretrained_workdir)
    config.mesh = ml_collections.ConfigDict(dict(fsdp=8))
    mesh = shd.make_mesh(config.mesh)
    _, _, init_fn, abstract_state, _ = setup_training(config, mesh)

    # The loaded tower lands with the shardings the rules give it on this mesh, not the ones it
    # was saved with (the pre-trained run had one device).
    initial = init_fn()
    for name in FROZEN:
        for leaf, wanted in zip(jax.tree.leaves(initial.params[name]), jax.tree.leaves(abstract_state.params[name])):
            assert leaf.sharding == wanted.sharding
    fc1 = initial.params["image_encoder"]["encoder"]["blocks"]["mlp"]["fc1"]["kernel"]  # [1, 32, 64]
    assert fc1.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")
    assert fc1.addressable_shards[0].data.size == fc1.size // 8
    # Adam's two moments exist for the trained text tower only, laid out like their weights.
    layout = shd.describe(jax.tree.map(lambda leaf: leaf.sharding, abstract_state.opt_state))
    assert [spec for path, spec in layout.items() if path.endswith("blocks/mlp/fc1/kernel")] == [
        "P(None, 'fsdp')"
    ] * 2
    assert all("text_encoder" in path for path in layout if path.endswith("blocks/mlp/fc1/kernel"))
    initial = jax.device_get(initial.params)

    train_and_evaluate(config, str(tmp_path / "lit"), stop_after=3)
    lit = saved_params(str(tmp_path / "lit"), config)
    assert int(lit.step) == 3
    for name in FROZEN:
        assert_trees_equal(lit.params[name], pretrained_params[name])
    # Every trained leaf moved away from its initial value, and the text side started fresh.
    for name in ("text_encoder", "text_projection", "logit_scale"):
        for before, after in zip(jax.tree.leaves(initial[name]), jax.tree.leaves(lit.params[name]), strict=True):
            assert np.any(np.asarray(after) != np.asarray(before)), name
    assert not np.array_equal(initial["text_projection"]["kernel"], pretrained_params["text_projection"]["kernel"])


def test_frozen_parameters_have_no_optimizer_state(data_dir):
    mesh = shd.make_mesh(1)
    plain = tiny_config(data_dir)
    lit = tiny_config(data_dir)
    lit.freeze = tuple(f"^{name}/" for name in FROZEN)
    _, _, _, plain_state, _ = setup_training(plain, mesh)
    _, _, _, lit_state, _ = setup_training(lit, mesh)

    def sizes(tree):
        return sum(leaf.size for leaf in jax.tree.leaves(tree))

    def float_bytes(tree):
        return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree)
                   if jnp.issubdtype(leaf.dtype, jnp.floating))

    frozen = sum(sizes(lit_state.params[name]) for name in FROZEN)
    trained = sizes(lit_state.params) - frozen
    assert frozen > trained > 0
    # Adam's two moments (float32) for every parameter without freezing; for trained ones only with.
    assert float_bytes(plain_state.opt_state) == 2 * 4 * sizes(plain_state.params)
    assert float_bytes(lit_state.opt_state) == 2 * 4 * trained
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(lit_state.opt_state)]
    assert not [p for p in paths if any(name in p for name in FROZEN)]
    assert len(jax.tree.leaves(lit_state.opt_state)) < len(jax.tree.leaves(plain_state.opt_state))


def test_freeze_pattern_that_matches_nothing_names_it_and_real_names(data_dir):
    config = tiny_config(data_dir)
    config.freeze = ("^image_encoder/", "^image_encodr/")
    with pytest.raises(ValueError, match=r"pattern '\^image_encodr/' matches no parameter.*image_encoder/"):
        setup_training(config, shd.make_mesh(1))


def test_pretrained_checkpoint_of_another_shape_names_the_parameter_and_both_shapes(data_dir, pretrained):
    config = lit_config(data_dir, pretrained[0])
    config.model.image.width = 48
    _, _, init_fn, _, _ = setup_training(config, shd.make_mesh(1))
    with pytest.raises(ValueError, match=r"parameter params/image_encoder/\S+ has shape \(1, 2, 16\) in the checkpoint but \(1, 2, 24\)"):
        init_fn()


def test_resumed_lit_run_keeps_its_own_weights_and_needs_no_pretrained_run(data_dir, pretrained, tmp_path):
    pretrained_workdir = str(tmp_path / "pretrained")
    shutil.copytree(pretrained[0], pretrained_workdir)
    config = lit_config(data_dir, pretrained_workdir, mesh=ml_collections.ConfigDict(dict(data=1)))
    workdir = str(tmp_path / "lit")
    train_and_evaluate(config, workdir, stop_after=2)
    at_stop = saved_params(workdir, config)

    # The pre-trained run is gone: a new run cannot start, but the interrupted one resumes from its
    # own checkpoint (which would fail here if it tried to load the pre-trained weights again).
    shutil.rmtree(pretrained_workdir)
    with pytest.raises(FileNotFoundError, match="has no checkpoints folder: train that run first"):
        train_and_evaluate(config, str(tmp_path / "fresh"), stop_after=1)
    train_and_evaluate(config, workdir, stop_after=4)
    resumed = saved_params(workdir, config)
    assert int(resumed.step) == 4
    for name in FROZEN:
        assert_trees_equal(resumed.params[name], pretrained[1][name])
    assert not np.array_equal(resumed.params["text_projection"]["kernel"], at_stop.params["text_projection"]["kernel"])


def _toy():
    params = {"tower": {"kernel": jnp.full((3, 3), 2.0)}, "head": {"kernel": jnp.full((2, 2), 3.0)}}
    # Frozen gradients a million times larger: if clipping saw them, the head's would vanish.
    grads = {"tower": {"kernel": jnp.full((3, 3), 1e6)}, "head": {"kernel": jnp.array([[0.1, -0.2], [0.3, 0.4]])}}
    return params, grads


def test_frozen_updates_are_zero_and_clipping_sees_only_trained_gradients():
    params, grads = _toy()
    make = lambda: make_optimizer(optax.constant_schedule(0.1), weight_decay=0.5, grad_clip_norm=1.0)  # noqa: E731
    optimizer = freeze_parameters(make(), "^tower/")
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    # No gradient step and no weight decay for the frozen kernel: θ + 0 = θ exactly.
    np.testing.assert_array_equal(updates["tower"]["kernel"], 0.0)
    np.testing.assert_array_equal(optax.apply_updates(params, updates)["tower"]["kernel"], params["tower"]["kernel"])
    # The head is updated exactly as by the optimizer on the head alone (clip norm from its grads).
    alone = make()
    head_only, _ = alone.update({"head": grads["head"]}, alone.init({"head": params["head"]}), {"head": params["head"]})
    np.testing.assert_allclose(updates["head"]["kernel"], head_only["head"]["kernel"], rtol=1e-6)
    assert optax.global_norm(trained_only(grads, "^tower/")) == pytest.approx(float(optax.global_norm(grads["head"])))


def test_skipping_non_finite_steps_sees_only_trained_gradients():
    params, grads = _toy()
    optimizer = freeze_parameters(
        make_optimizer(optax.constant_schedule(0.1), grad_clip_norm=1.0, skip_nonfinite_steps=3), ("^tower/",)
    )
    state = optimizer.init(params)
    assert [int(c) for c in skipped_step_counts(state)] == [0, 0]
    # NaN in a frozen gradient: nothing to skip, the head is updated.
    bad_frozen = dict(grads, tower={"kernel": jnp.full((3, 3), jnp.nan)})
    updates, state = optimizer.update(bad_frozen, state, params)
    assert [int(c) for c in skipped_step_counts(state)] == [0, 0]
    assert np.all(np.asarray(updates["head"]["kernel"]) != 0) and np.all(updates["tower"]["kernel"] == 0)
    # NaN in a trained gradient: the step is skipped and counted.
    bad_trained = dict(grads, head={"kernel": jnp.full((2, 2), jnp.nan)})
    updates, state = optimizer.update(bad_trained, state, params)
    assert [int(c) for c in skipped_step_counts(state)] == [1, 1]
    np.testing.assert_array_equal(updates["head"]["kernel"], 0.0)
