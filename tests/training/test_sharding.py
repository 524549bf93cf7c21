"""The mesh and the logical axis rules: which device holds which part of which array."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from mmjax.training import sharding as shd
from mmjax.training.setup import setup_training
from tests.training.test_step import tiny_config


def test_mesh_shape_fills_one_axis_and_names_bad_sizes():
    assert shd.mesh_shape({"data": -1}, 8) == {"data": 8, "fsdp": 1, "tensor": 1}
    assert shd.mesh_shape({"data": 2, "fsdp": -1, "tensor": 2}, 8) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert shd.mesh_shape(4, 8) == {"data": 4, "fsdp": 1, "tensor": 1}
    mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    with pytest.raises(ValueError, match="config.mesh.data=3 does not fit the 8"):
        shd.mesh_shape({"data": 3}, 8)
    with pytest.raises(ValueError, match="at most one axis may be -1"):
        shd.mesh_shape({"data": -1, "fsdp": -1}, 8)
    with pytest.raises(ValueError, match=r"unknown axis \['tensr'\]"):
        shd.mesh_shape({"data": 2, "tensr": 4}, 8)


def test_rules_map_logical_axes_and_leave_uneven_dimensions_whole():
    mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    assert shd.mesh_sharding(("embed", "mlp"), (32, 64), mesh).spec == P("fsdp", "tensor")
    assert shd.mesh_sharding(("layers", "embed", "heads", "kv"), (2, 32, 4, 8), mesh).spec == P(None, "fsdp", "tensor")
    # A vocabulary of 257 does not split over tensor = 2: it stays whole, the width is split.
    assert shd.mesh_sharding(("vocab", "embed"), (257, 32), mesh).spec == P(None, "fsdp")
    assert shd.mesh_sharding(None, (5,), mesh).spec == P()
    # Batch goes over both data-parallel axes; size-1 axes are dropped from parameter specs.
    assert shd.batch_sharding(mesh).spec == P(("data", "fsdp"))
    dp = shd.make_mesh({"data": 8})
    assert shd.mesh_sharding(("embed", "mlp"), (32, 64), dp).spec == P()


def state_layout(mesh_config):
    mesh = shd.make_mesh(mesh_config)
    _, _, _, abstract_state, _ = setup_training(tiny_config(), mesh)
    return abstract_state, shd.describe(jax.tree.map(lambda x: x.sharding, abstract_state))


def test_parameter_and_optimizer_shardings_are_the_rules():
    abstract_state, layout = state_layout({"data": 2, "fsdp": 2, "tensor": 2})
    block = "params/image_encoder/encoder/blocks"
    expected = {
        # Scanned layers carry a leading `layers` axis, never split.
        f"{block}/attn/query/kernel": "P(None, 'fsdp', 'tensor')",      # [layers, embed, heads, kv]
        f"{block}/attn/query/bias": "P(None, 'tensor')",                # [layers, heads, kv]
        f"{block}/attn/out/kernel": "P(None, 'tensor', None, 'fsdp')",  # [layers, heads, kv, embed]
        f"{block}/mlp/fc1/kernel": "P(None, 'fsdp', 'tensor')",         # [layers, embed, mlp]
        f"{block}/mlp/fc1/bias": "P(None, 'tensor')",
        f"{block}/mlp/fc2/kernel": "P(None, 'tensor', 'fsdp')",         # [layers, mlp, embed]
        f"{block}/ln_attn/scale": "P()",                                # small: replicated
        "params/image_encoder/patch_embed/conv/kernel": "P(None, None, None, 'fsdp')",
        "params/text_encoder/token_embed/embed/embedding": "P('tensor', 'fsdp')",  # [vocab, embed]
        "params/image_projection/kernel": "P('fsdp',)",                 # [embed, joint]
        "params/logit_scale": "P()",
        "step": "P()",
    }
    for name, spec in expected.items():
        assert layout[name] == spec, name
    # Adam's first and second moments are laid out like the parameter they belong to.
    for moment in ("mu", "nu"):
        names = [n for n in layout if n.endswith(f"{moment}/image_encoder/encoder/blocks/mlp/fc1/kernel")]
        assert len(names) == 1 and layout[names[0]] == "P(None, 'fsdp', 'tensor')"
    count = [n for n in layout if n.startswith("opt_state") and n.endswith("count")]
    assert count and all(layout[n] == "P()" for n in count)


def test_data_parallel_replicates_every_parameter():
    _, layout = state_layout({"data": 8})
    assert {spec for name, spec in layout.items()} == {"P()"}


def test_fsdp_shards_parameters_and_optimizer_state_eight_ways():
    abstract_state, layout = state_layout({"fsdp": 8})
    sharded = [n for n, spec in layout.items() if "fsdp" in spec]
    assert any(n.startswith("params/") for n in sharded) and any(n.startswith("opt_state") for n in sharded)
    assert not any("tensor" in spec for spec in layout.values())
    # Per device: every annotated matrix is 1/8th; what stays replicated is small.
    total = sum(x.size for x in jax.tree.leaves(abstract_state.params))
    per_device = sum(
        np.prod(x.sharding.shard_shape(x.shape)) for x in jax.tree.leaves(abstract_state.params)
    )
    assert per_device < total / 6
