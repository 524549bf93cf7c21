"""Faults: preemption (SIGTERM), crashes (kill -9, also in the middle of a save) and NaN/Inf steps.

The signal and crash tests run `train.py` in subprocesses, as a user or a scheduler would, with the
tiny config of `test_loop` given as `--config.*` flags, and compare the final parameters, bit for
bit, with those of one uninterrupted run of the same config (shared by the module). Of the tests
that train, the default run keeps the kill -9 one (which also starts a second job on the live run
folder, and resumes past the stale lock the kill leaves); the others are marked slow
(`make test-slow`). The
subprocesses get an explicit environment: one CPU device (not conftest's 8: compiling and saving
are several times faster on one, and all runs compared share that mesh), conftest's code
generation, and one persistent compilation cache, so only the first run compiles the step.

The NaN tests feed a task a dataset in which some images are blank: the task standardises each
image by its own standard deviation, 0 for a blank image, so its batch's loss and gradients become
0/0 = NaN at steps known in advance from the data order.
"""

import dataclasses
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.clip_tiny import get_config
from mmjax.data.pipeline import make_train_loader
from mmjax.data.prepare import prepare_shapes
from mmjax.losses import clip_loss
from mmjax.training.checkpoint import Checkpointer, _path_name, check_compatible
from mmjax.training.loop import NonFiniteGuard, PreemptionWatch, train_and_evaluate
from mmjax.training.optimizer import make_optimizer, make_schedule
from mmjax.training.run_lock import read_holder
from mmjax.training.setup import config_to_json
from mmjax.training.tasks import ContrastiveTask
from tests.conftest import CODEGEN_XLA_FLAGS
from tests.training.test_loop import assert_trees_equal, saved_params, tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_STEPS = 24
CHECKPOINT_EVERY = 4


# --- Subprocess runs of train.py ------------------------------------------------------------------


def run_config(data_dir):
    """The tiny config of the subprocess tests: a metrics line every step, a checkpoint every 4."""
    config = tiny_config(data_dir, num_steps=NUM_STEPS)
    config.log_every = 1
    config.checkpoint_every = CHECKPOINT_EVERY
    return config


def config_flags(config) -> list[str]:
    """`--config.a.b=value` for every field where `config` differs from configs/clip_tiny.py."""

    def leaves(tree, prefix=""):
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    defaults = dict(leaves(get_config().to_dict()))
    return [f"--config.{name}={value}" for name, value in leaves(config.to_dict()) if value != defaults[name]]


def start(command: list[str], log_path: str, env: dict) -> subprocess.Popen:
    """Starts a process whose output goes to `log_path` (a pipe nobody reads could fill and stall it)."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    proc.log_path = log_path
    return proc


def output(proc: subprocess.Popen) -> str:
    return open(proc.log_path).read()


def start_training(config, workdir, **env) -> subprocess.Popen:
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=CODEGEN_XLA_FLAGS, PYTHONUNBUFFERED="1",
               JAX_COMPILATION_CACHE_DIR=os.path.join(config.data.data_dir, "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", **env)
    command = [sys.executable, os.path.join(REPO, "train.py"), "--config", os.path.join(REPO, "configs/clip_tiny.py"),
               "--workdir", str(workdir), *config_flags(config)]
    runs = len([name for name in os.listdir(os.path.dirname(workdir)) if name.endswith(".log")])
    return start(command, f"{workdir}.{runs}.log", env)


def finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    """Waits for a run that must succeed; returns its output."""
    proc.wait(timeout=timeout)
    assert proc.returncode == 0, f"exit code {proc.returncode}\n{output(proc)[-5000:]}"
    return output(proc)


def kill_9(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def wait_for(condition, proc: subprocess.Popen, timeout: float = 180, poll: float = 0.002):
    """Polls `condition()` until it returns something true, and returns that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit code {proc.returncode}) first:\n{output(proc)[-5000:]}")
        time.sleep(poll)
    proc.kill()
    raise AssertionError("timed out")


def last_logged_step(workdir) -> int:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    steps = [json.loads(line)["step"] for line in open(path).read().splitlines() if line.endswith("}")]
    return max(steps, default=0)


def checkpoint_folders(workdir) -> list[str]:
    directory = os.path.join(workdir, "checkpoints")
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


def complete_steps(workdir) -> list[int]:
    return sorted(int(name) for name in checkpoint_folders(workdir) if name.isdigit())


def latest_checkpoint(workdir) -> int | None:
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    try:
        return checkpointer.latest_step()
    finally:
        checkpointer.close()


@pytest.fixture(scope="module")
def data_dir(prepared_data_dir):
    return prepared_data_dir


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    """The final state of one uninterrupted run."""
    config = run_config(data_dir)
    workdir = tmp_path_factory.mktemp("uninterrupted")
    finish(start_training(config, workdir))
    return saved_params(str(workdir), config)


@pytest.mark.slow
def test_sigterm_checkpoints_the_step_it_stopped_at_and_exits_0(data_dir, reference, tmp_path):
    config = run_config(data_dir)
    workdir = tmp_path / "preempted"
    proc = start_training(config, workdir)
    wait_for(lambda: last_logged_step(workdir) >= 2, proc)
    proc.send_signal(signal.SIGTERM)
    out = finish(proc)
    # The flags rebuilt exactly the reference's config (else bit-identity would prove nothing).
    assert json.loads(open(workdir / "config.json").read()) == json.loads(config_to_json(config))

    stopped = int(re.search(r"Stopped after step (\d+) \(SIGTERM\)", out).group(1))
    assert 2 <= stopped < NUM_STEPS, out
    assert complete_steps(workdir)[-1] == stopped == latest_checkpoint(workdir)
    assert last_logged_step(workdir) == stopped  # the stopping step's metrics were checked and logged
    assert not os.path.exists(workdir / "results.json")  # stopped, not finished

    out = finish(start_training(config, workdir))  # the next run resumes there and finishes
    assert f"at step {stopped}." in out, out
    assert os.path.exists(workdir / "results.json")
    assert_trees_equal(saved_params(str(workdir), config), reference)


def test_a_second_job_refuses_a_live_run_and_kill_9_leaves_a_stale_lock_and_resumes_bit_identically(
        data_dir, reference, tmp_path):
    config = run_config(data_dir)
    workdir = tmp_path / "crashed"
    # A step after the first checkpoint, at least 10 steps before the end.
    kill_after = random.randint(CHECKPOINT_EVERY + 1, NUM_STEPS - 10)
    proc = start_training(config, workdir)
    wait_for(lambda: os.path.exists(workdir / "config.json") and read_holder(str(workdir)), proc)

    # A second job on the folder refuses at start, naming the first, and writes nothing there: the
    # config.json the first one wrote is untouched (a job that started would rewrite it first).
    # The first is paused meanwhile (SIGSTOP keeps its lock), so that it cannot finish first.
    config_written = os.stat(workdir / "config.json").st_mtime_ns
    proc.send_signal(signal.SIGSTOP)
    second = start_training(config, workdir)
    second.wait(timeout=120)
    proc.send_signal(signal.SIGCONT)
    assert second.returncode == 1, output(second)
    refusal = output(second).strip().splitlines()[-1]
    assert re.fullmatch(rf"error: \S+crashed is in use by another training job: process {proc.pid} on host "
                        r"\S+, started \S+, which holds its lock\. Wait for it to finish or stop it, or train "
                        r"into another --workdir\.", refusal), output(second)
    assert "Traceback" not in output(second)
    assert os.stat(workdir / "config.json").st_mtime_ns == config_written

    wait_for(lambda: last_logged_step(workdir) >= kill_after and complete_steps(workdir), proc)
    kill_9(proc)
    killed_at, resume_step = last_logged_step(workdir), latest_checkpoint(workdir)
    print(f"killed after step {killed_at} (aimed at {kill_after}); last checkpoint {resume_step}")
    assert resume_step is not None and resume_step <= killed_at < NUM_STEPS
    # Killed while it wrote a line every step: the log holds whole JSON lines only.
    logged = [json.loads(line)["step"] for line in open(workdir / "metrics.jsonl")]
    assert logged == list(range(1, killed_at + 1))

    out = finish(start_training(config, workdir))
    assert f"was locked by process {proc.pid} on host" in out and "taking over its stale lock" in out, out
    assert f"at step {resume_step}." in out, out
    assert_trees_equal(saved_params(str(workdir), config), reference)
    # The log is the history of the final state: the steps after the checkpoint that the killed
    # run had logged were trained again, and each step has one line.
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert [row["step"] for row in rows if "loss" in row] == list(range(1, NUM_STEPS + 1))
    assert open(workdir / "run.lock").read() == ""  # released on a clean exit
    # Orbax's INFO lines (a dozen per restore) went to the run's log, not the terminal; the job
    # that was refused the folder wrote nothing there.
    assert "orbax" not in out.lower() and "checkpoint_manager.py" not in out, out
    log = open(workdir / "logs" / "train.log").read()
    assert "checkpoint_manager.py" in log and f"pid={proc.pid} " in log and f"pid={second.pid} " not in log


@pytest.mark.slow
def test_kill_9_during_a_save_keeps_the_previous_checkpoint(data_dir, reference, tmp_path):
    config = run_config(data_dir)
    workdir = tmp_path / "killed_saving"

    def save_in_progress():
        # A save after the first complete one: its temporary folder exists until it is renamed.
        done = complete_steps(workdir)
        return [name for name in checkpoint_folders(workdir) if ".orbax-checkpoint-tmp" in name] if done else []

    # The kill may land just after the rename that completes the save; then the next save is tried.
    for attempt in range(3):
        proc = start_training(config, workdir)
        unfinished = wait_for(save_in_progress, proc, poll=0.0005)
        kill_9(proc)
        if set(unfinished) <= set(checkpoint_folders(workdir)):
            break
    else:
        pytest.fail("three kills all landed after the save they aimed at had completed")
    unfinished_step = int(unfinished[0].split(".")[0])
    previous = latest_checkpoint(workdir)
    print(f"killed while saving step {unfinished_step} (attempt {attempt + 1}); previous checkpoint {previous}")
    assert previous is not None and previous < unfinished_step  # the half-written save is not "latest"

    out = finish(start_training(config, workdir))
    assert f"at step {previous}." in out, out
    assert not any(".orbax-checkpoint-tmp" in name for name in checkpoint_folders(workdir))  # cleaned up
    assert_trees_equal(saved_params(str(workdir), config), reference)


@pytest.mark.slow
def test_sigterm_to_one_of_two_processes_stops_both_after_the_same_step(data_dir, tmp_path):
    """JAX's preemption sync: the signalled process tells the other, and they agree on a step."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        coordinator = f"127.0.0.1:{free.getsockname()[1]}"
    config = run_config(data_dir)
    config.num_steps = 400
    workdir = tmp_path / "two_processes"
    procs = [start_training(config, workdir, JAX_COORDINATOR_ADDRESS=coordinator, JAX_NUM_PROCESSES="2",
                            JAX_PROCESS_ID=str(i)) for i in range(2)]
    wait_for(lambda: last_logged_step(workdir) >= 2, procs[0])
    procs[1].send_signal(signal.SIGTERM)
    outs = [finish(proc) for proc in procs]
    stopped = [int(re.search(r"Process \d stopped after step (\d+) \(SIGTERM to one of the processes\)", out).group(1))
               for out in outs]
    assert stopped[0] == stopped[1], outs  # the same step on both
    assert complete_steps(workdir)[-1] == stopped[0] < 400


# --- NaN and Inf ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BlankImageTask(ContrastiveTask):
    """CLIP on images standardised one by one, (x - mean) / std, with some images blanked.

    A blank image has std 0, so it becomes 0/0 = NaN, and so do its batch's loss (the contrastive
    softmax mixes the whole batch) and every gradient: the classic bad-example NaN.
    `config.blank_scenes` names the training scenes whose image is blanked.
    """

    blank_scenes: frozenset = frozenset()

    @classmethod
    def from_config(cls, config):
        return dataclasses.replace(super().from_config(config), blank_scenes=frozenset(config.blank_scenes))

    def train_preprocess(self, data, config):
        preprocess = ContrastiveTask.train_preprocess(data, config)

        def blank_listed(example, rng):
            out = preprocess(example, rng)
            if example["scene_key"].decode() in self.blank_scenes:
                out["images"] = np.zeros_like(out["images"])
            return out

        return blank_listed

    def loss(self, params, batch, rng, train=True):
        images = batch["images"].astype(jnp.float32)
        mean = images.mean(axis=(1, 2, 3), keepdims=True)
        std = images.std(axis=(1, 2, 3), keepdims=True)
        out = self.model.apply({"params": params}, (images - mean) / std, batch["token_ids"],
                               deterministic=not train, rngs={"dropout": rng})
        return clip_loss(out["image_embeddings"], out["text_embeddings"], out["logit_scale"])


def blank_config(data_dir, blank_scenes, num_steps=12, **optimizer):
    config = tiny_config(data_dir, num_steps=num_steps)
    config.task = BlankImageTask
    config.blank_scenes = tuple(sorted(blank_scenes))
    config.optimizer.update(optimizer)
    config.log_every = 4
    config.checkpoint_every = 2
    # One device of the eight: the checks do not depend on the mesh, and compiling is faster.
    config.mesh.data = 1
    return config


def scenes_by_step(config, num_steps) -> list[set[str]]:
    """The scenes in each step's batch, read with the training loader (same seed, same order)."""
    source = prepare_shapes(config.data).split("train")
    keys = make_train_loader(source, lambda example, rng: {"key": example["scene_key"]},
                             batch_size=config.batch_size, seed=config.seed, num_threads=1)
    return [set(), *({key.decode() for key in next(keys)["key"]} for _ in range(num_steps))]


def blanked_steps(config, num_steps) -> list[int]:
    """The steps whose batch holds a blank image, found from the batches themselves."""
    data = prepare_shapes(config.data)
    task = config.task.from_config(config)
    loader = make_train_loader(data.split("train"), task.train_preprocess(data, config),
                               batch_size=config.batch_size, seed=config.seed, num_threads=1)
    return [step for step in range(1, num_steps + 1) if np.any(next(loader)["images"].std(axis=(1, 2, 3)) == 0)]


@pytest.fixture(scope="module")
def one_bad_scene(data_dir):
    """A scene first seen at step 3 (between checkpoints 2 and 4), and every step it is in."""
    config = tiny_config(data_dir)
    scene = sorted(scenes_by_step(config, 3)[3])[0]
    config = blank_config(data_dir, [scene])
    bad_steps = blanked_steps(config, config.num_steps)
    assert bad_steps[0] == 3 and len(bad_steps) == 3, bad_steps  # once per epoch of 4 steps
    return scene, bad_steps


@pytest.mark.slow
def test_nan_stops_the_run_naming_the_first_bad_step_and_metric(data_dir, one_bad_scene, tmp_path):
    scene, _ = one_bad_scene
    config = blank_config(data_dir, [scene])
    workdir = str(tmp_path / "nan")
    # Step 3's metrics reach the host at step 4 (a logging and checkpoint step): the error names
    # step 3, and the checkpoint of step 4 is never written.
    with pytest.raises(FloatingPointError, match=r"^loss = nan and grad_norm = nan at step 3 \(the first non-finite step\)"):
        train_and_evaluate(config, workdir)
    assert complete_steps(workdir) == [2]
    state = saved_params(workdir, config)
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(state.params))


@pytest.mark.slow
def test_skipping_leaves_the_state_untouched_counts_and_continues(data_dir, one_bad_scene, tmp_path):
    scene, bad_steps = one_bad_scene
    config = blank_config(data_dir, [scene], skip_nonfinite_steps=3)
    config.checkpoint_every = 1
    config.keep_checkpoints = 100
    workdir = str(tmp_path / "skip")
    results = train_and_evaluate(config, workdir)
    assert results is not None and np.isfinite(results["i2t_r1"])

    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    skipped = {row["step"]: row["skipped_steps"] for row in rows if "skipped_steps" in row}
    assert skipped[config.num_steps] == len(bad_steps)
    assert all(skipped[s] == sum(b <= s for b in bad_steps) for s in skipped), (skipped, bad_steps)
    assert all(np.isfinite(row["loss"]) for row in rows if "loss" in row)  # averages of good steps

    for step in (bad_steps[0], bad_steps[0] + 1):
        before, after = saved_params(workdir, config, step - 1), saved_params(workdir, config, step)
        inner_before, inner_after = before.opt_state.inner_state, after.opt_state.inner_state
        if step in bad_steps:  # a skipped step changes nothing but the counters
            assert_trees_equal((before.params, inner_before), (after.params, inner_after))
            assert int(after.opt_state.total_notfinite) == int(before.opt_state.total_notfinite) + 1
        else:
            assert not np.array_equal(jax.tree.leaves(before.params)[0], jax.tree.leaves(after.params)[0])


@pytest.mark.slow
def test_skipping_stops_after_the_limit_of_bad_steps_in_a_row(data_dir, tmp_path):
    all_scenes = {example["scene_key"].decode() for example in prepare_shapes(tiny_config(data_dir).data).split("train")}
    config = blank_config(data_dir, all_scenes, skip_nonfinite_steps=3)
    workdir = str(tmp_path / "diverged")
    with pytest.raises(FloatingPointError, match=r"at step 3: 3 non-finite steps in a row \(steps 1 to 3\).*skip_nonfinite_steps = 3"):
        train_and_evaluate(config, workdir)
    # Checkpoint 2 was written (its 2 bad steps were within the limit) and holds the untouched
    # initial parameters; nothing after it was saved.
    assert complete_steps(workdir) == [2]
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(saved_params(workdir, config).params))


# --- Small parts ------------------------------------------------------------------------------------


def test_preemption_watch_sets_a_flag_and_gives_the_signals_back():
    seen = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    try:
        watch = PreemptionWatch(agree_every=1)
        assert not watch.should_stop(1)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: only the flag is set
        assert watch.should_stop(2) and watch.received == "SIGINT" and seen == []
        os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C goes to the handler from before
        assert seen == [signal.SIGINT]
        watch.restore()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        assert signal.getsignal(signal.SIGINT) is not watch._on_signal
    finally:
        signal.signal(signal.SIGINT, previous)


def test_resuming_with_other_optimizer_settings_names_them():
    params = {"dense": {"kernel": jnp.zeros((2, 3)), "bias": jnp.zeros((3,))}}
    schedule = make_schedule(1e-3, warmup_steps=1, total_steps=10)

    def state(**settings):
        return {"params": params, "opt_state": jax.eval_shape(make_optimizer(schedule, **settings).init, params)}

    saved = {_path_name(path): tuple(leaf.shape) for path, leaf in jax.tree_util.tree_leaves_with_path(state())}
    check_compatible(saved, state())  # the same settings restore
    with pytest.raises(ValueError, match=r"opt_state/1/0/count is only in the checkpoint.*skip_nonfinite_steps"):
        check_compatible(saved, state(skip_nonfinite_steps=3))
    with pytest.raises(ValueError, match=r"opt_state/0/0/count is only in the optimizer built from the config"):
        check_compatible(saved, state(grad_clip_norm=None))


def test_guard_checks_each_step_of_a_logging_window():
    good, nan, inf = ({"loss": v, "grad_norm": 1.0} for v in (2.0, float("nan"), float("inf")))
    window = [good, good, {"loss": 2.0, "grad_norm": float("inf")}, nan]  # steps 11..14
    with pytest.raises(FloatingPointError, match=r"^grad_norm = inf at step 13 \(the first non-finite step\)"):
        NonFiniteGuard(skip_limit=0).check(11, window)

    skipping = NonFiniteGuard(skip_limit=3, next_step=11)
    assert skipping.check(11, [good, nan, good, inf, nan]) == [good, good]  # bad steps left out
    with pytest.raises(FloatingPointError, match=r"at step 16: 3 non-finite steps in a row \(steps 14 to 16\)"):
        skipping.check(16, [nan])  # the streak goes on across windows
    # A resumed run starts with the streak its optimizer state recorded.
    with pytest.raises(FloatingPointError, match=r"\(steps 9 to 11\)"):
        NonFiniteGuard(skip_limit=3, streak=2, next_step=11).check(11, [inf])
