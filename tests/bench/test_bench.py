"""bench/: the FLOP count that MFU rests on, the PyTorch peer's equivalence, and that the
benchmarks run and fill every table of BENCHMARKS.md."""

import json
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bench import report
from bench.profile_step import hlo_dots
from bench.run_all import OPEN_CLIP_FORM, RESULTS
from bench.workload import load_config, random_batch, train_flops
from mmjax.losses import clip_loss
from mmjax.training.setup import build_task

SMALL_S16 = {  # clip_s16's architecture (GELU, class token, ln_pre, no patch bias) shrunk
    "batch_size": 8, "data.image_size": 64, "data.text_len": 16, "model.image.depth": 2,
    "model.text.depth": 2, "model.text.vocab_size": 512,
}


# clip_tiny's count is checked by the example of docs/performance.md, which the docs tests run
# (the same computation at batch 8); here, the architecture of clip_s16 (slow).
@pytest.mark.parametrize("path, overrides", [
    pytest.param("configs/clip_s16.py", SMALL_S16, marks=pytest.mark.slow),
])
def test_analytic_flops_equal_the_compiled_gradients_matmuls(path, overrides):
    """Every dot XLA compiles for loss + gradients (layers unrolled, so each is counted),
    summed as 2·M·N·K, equals the analytic count of bench/workload.py."""
    config = load_config(path, **overrides, **{"model.image.scan": False, "model.text.scan": False})
    config.contrastive_loss = clip_loss  # the unsharded loss: no mesh needed
    task = build_task(config)
    batch = {k: jnp.asarray(v) for k, v in random_batch(config).items()}
    params = nn.unbox(jax.jit(task.init)(jax.random.key(0), batch))
    grads = jax.jit(jax.grad(lambda p: task.loss(p, batch, jax.random.key(1))[0]))
    hlo = grads.lower(params).compile().as_text()
    compiled = sum(flops for flops, _ in hlo_dots(hlo).values())
    assert compiled == pytest.approx(train_flops(config), rel=1e-6)


@pytest.mark.parametrize("path, overrides", [
    ("configs/clip_tiny.py", {**OPEN_CLIP_FORM, "batch_size": 8}),  # ReLU, swapped into open_clip
    pytest.param("configs/clip_s16.py", SMALL_S16, marks=pytest.mark.slow),  # GELU, class token, ln_pre
])
def test_peer_is_the_same_model(path, overrides):
    """open_clip's model built by bench/peer.py has mmjax's parameter count and, with mmjax's
    weights copied in, gives the same embeddings: the two benchmarks time the same function."""
    pytest.importorskip("open_clip")
    from bench.peer import build_peer, check_same_function

    config = load_config(path, **overrides)
    task = build_task(config)
    batch = random_batch(config, seed=3)
    params = nn.unbox(jax.jit(task.init)(jax.random.key(0), {k: jnp.asarray(v) for k, v in batch.items()}))
    model, mmjax_params = build_peer(config, params)
    assert sum(p.numel() for p in model.parameters()) == mmjax_params
    assert check_same_function(task, params, model, batch) < 1e-5


@pytest.mark.slow  # ~13 s; `make bench` runs the same code on every config
def test_step_benchmark_measures_a_real_step():
    from bench.step import measure

    row = measure("configs/clip_tiny.py", steps=2, warmup=1, batch_size=16)
    assert row["devices"] == jax.device_count() and row["batch_size"] == 16
    assert len(row["step_s_all"]) == 2 and all(t > 0 for t in row["step_s_all"])
    assert row["examples_per_s"] == pytest.approx(16 / row["step_s"])
    # The scanned program's XLA count holds each layer once: below the analytic count.
    assert 0 < row["flops_xla"] < row["flops_analytic"]
    assert row["peak_bytes_xla"] > 0


def test_overrides_name_missing_fields():
    with pytest.raises(KeyError, match="batch_sise"):
        load_config("configs/clip_tiny.py", batch_sise=8)


def test_report_fills_every_table(tmp_path):
    """The committed results render into every generated block of a copy of BENCHMARKS.md."""
    with open(RESULTS) as f:
        results = json.load(f)
    doc = tmp_path / "BENCHMARKS.md"
    shutil.copy(report.DOC, doc)
    report.write(results, doc=str(doc), plots=str(tmp_path / "plots"))
    text = doc.read_text()
    for name in report.SECTIONS:
        block = text.split(f"<!-- bench:{name} -->")[1].split(f"<!-- /bench:{name} -->")[0]
        assert block.strip() and "not measured yet" not in block, name
    assert os.path.exists(tmp_path / "plots" / "scaling.png")
    assert np.isfinite(results["ceiling"]["matmul_flops_per_s"])


def test_cpu_extensions_are_read_from_cpuinfo(tmp_path):
    from bench.cpu import cpu_info

    amd = tmp_path / "amd"
    amd.write_text("processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse2 avx fma avx2 bmi2\n\n"
                   "processor\t: 1\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse2 avx fma avx2 bmi2\n")
    assert cpu_info(str(amd))["model"] == "AMD EPYC 7B13"
    assert cpu_info(str(amd))["extensions"] == ["AVX2", "FMA"]
    xeon = tmp_path / "xeon"
    xeon.write_text("model name\t: Intel(R) Xeon(R) Platinum 8481C\nflags\t\t: avx2 fma avx512f avx512_bf16 "
                    "amx_bf16 amx_tile amx_int8\n")
    assert cpu_info(str(xeon))["extensions"] == ["AVX2", "FMA", "AVX-512", "AVX512-BF16", "AMX-BF16", "AMX-INT8"]


def test_tables_name_their_cpu_and_never_mix_two_silently():
    r = {"machine": {"cpu": "Intel Xeon, 2 cores: AVX2, AVX-512, AMX-BF16"}}
    rows = [{"config": "clip_tiny.py", "cpu": "Intel Xeon, 2 cores: AVX2, AVX-512, AMX-BF16"}]
    assert report.measured_on(r, rows).strip() == "Measured on: Intel Xeon, 2 cores: AVX2, AVX-512, AMX-BF16."
    rows.append({"config": "clip_s16.py", "cpu": "AMD EPYC, 2 cores: AVX2, FMA"})
    mixed = report.measured_on(r, rows)
    assert "Rows from different CPUs, not comparable" in mixed and "clip_s16.py: AMD EPYC" in mixed
    # Without AMX the bfloat16 rows say why they are missing.
    assert report.section_bf16({"bf16": {"skipped": "this CPU has no AMX-BF16 (AMD EPYC)"}}).startswith(
        "Not measured: this CPU has no AMX-BF16 (AMD EPYC)")


def test_configs_without_a_text_tower_get_a_random_batch_of_their_data():
    """vq_tiny (and dalle_tiny) have no `model.text`: the batch's ids come from the data's
    vocabulary, and the tokenizer's loss and gradients run on it (bench/profile_step.py's input)."""
    config = load_config("configs/vq_tiny.py", batch_size=4)
    assert "text" not in config.model
    batch = random_batch(config, seed=5)
    assert batch["images"].shape == (4, 48, 48, 3) and batch["images"].dtype == np.uint8
    ids = batch["token_ids"]
    assert ids.shape == (4, config.data.text_len) and 0 <= ids.min() and ids.max() < config.data.vocab_size
    config.model.tokenizer.update(channels=(8, 16, 16), code_dim=8, num_codes=32)  # f = 8, small
    task = build_task(config)
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    params = task.init(jax.random.key(0), batch)
    loss, grads = jax.value_and_grad(lambda p: task.loss(p, batch, jax.random.key(1))[0])(params)
    assert np.isfinite(float(loss)) and float(loss) > 0
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_step_rows_of_models_without_a_flop_formula_rate_xlas_count():
    """speed_row has a formula for dual encoders only: a VQ-VAE's row says so (NaN) instead of
    failing on the missing `model.embed_dim`, and bench/step.py rates XLA's per-device count
    times the devices instead; a dual encoder's analytic rate is left alone."""
    from bench.step import describe, rate_xla_flops_without_a_formula
    from bench.workload import has_analytic_flops, speed_row

    vq = load_config("configs/vq_tiny.py")
    assert not has_analytic_flops(vq) and has_analytic_flops(load_config("configs/clip_tiny.py"))
    assert np.isnan(train_flops(vq)) and train_flops(load_config("configs/clip_tiny.py")) > 0
    row = speed_row("mmjax", "configs/vq_tiny.py", vq, {}, [0.1, 0.3, 0.2])
    assert np.isnan(row["flops_analytic"]) and row["step_s"] == pytest.approx(0.2)
    row.update(devices=2, parameters=3e5, compile_s=1.0, flops_xla=4e9)
    row = rate_xla_flops_without_a_formula(row)
    assert row["flops_per_s"] == pytest.approx(2 * 4e9 / 0.2)
    text = describe(row, type("Args", (), {"steps": 3})())
    assert "no analytic count, XLA 4.0 per device" in text and "40.0 GFLOP/s" in text
    clip = {"flops_analytic": 1e9, "flops_per_s": 5e9, "flops_xla": 7e8, "devices": 2, "step_s": 0.2}
    assert rate_xla_flops_without_a_formula(dict(clip))["flops_per_s"] == 5e9
