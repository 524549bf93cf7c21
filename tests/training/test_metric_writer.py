"""metrics.jsonl stays valid JSON lines: whole lines only, one per step of the run's own history."""

import json
import os

from mmjax.training.metric_writer import MetricWriter, truncate_log


def rows(path):
    return [json.loads(line) for line in open(path)]


def test_each_write_is_one_whole_line_and_non_finite_values_are_strings(tmp_path):
    with MetricWriter(str(tmp_path), enabled=True) as writer:
        writer.write(1, {"loss": 2.5, "grad_norm": float("nan")})
        writer.write(2, {"loss": 2.0, "grad_norm": 1.0})
    assert rows(tmp_path / "metrics.jsonl") == [{"step": 1, "loss": 2.5, "grad_norm": "nan"},
                                               {"step": 2, "loss": 2.0, "grad_norm": 1.0}]


def test_a_resumed_run_drops_the_lines_after_its_checkpoint_and_a_line_cut_short(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    # Steps 1-6 logged, the last line cut short by power loss; the run resumes from checkpoint 4.
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 6)) + '{"step": 6, "lo')
    with MetricWriter(str(tmp_path), start_step=4, enabled=True) as writer:
        writer.write(5, {"loss": 0.5})
    assert [row["step"] for row in rows(path)] == [1, 2, 3, 4, 5]
    assert rows(path)[-1] == {"step": 5, "loss": 0.5}
    assert "removed 1 incomplete line(s)" in capsys.readouterr().err
    # A fresh start (no checkpoint) in the folder: the earlier steps were lost with their run.
    truncate_log(str(path), 0)
    assert path.read_text() == ""


def test_only_process_zero_writes(tmp_path):
    with MetricWriter(str(tmp_path), enabled=False) as writer:
        writer.write(1, {"loss": 1.0})
    assert not os.path.exists(tmp_path / "metrics.jsonl")
