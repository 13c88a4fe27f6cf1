"""`ecgfm demo`, the README's main command, end to end on a reduced budget."""

import json

import pytest

from ecgfm.demo import run_demo


@pytest.mark.slow
def test_demo_runs_every_stage_and_writes_one_results_table(tmp_path, capsys):
    result = run_demo(
        tmp_path,
        pretrain_steps=12,
        num_exams=96,
        num_downstream=80,
        finetune_steps=6,
        num_bootstrap=50,
    )
    out = capsys.readouterr().out
    assert "what pretraining added" in out
    for stage in ("pretrain/metrics.jsonl", "encoder/ecgfm_encoder.json", "demo_results.png"):
        assert (tmp_path / stage).is_file(), stage
    rows = json.loads((tmp_path / "demo_results.json").read_text())
    assert rows == json.loads(json.dumps(result["rows"]))
    methods = {(row["study"].split(" · ")[1], row["method"]) for row in rows}
    assert methods == {
        ("probe", "pretrained"),
        ("probe", "random_init"),
        ("fine-tune", "finetune"),
        ("fine-tune", "scratch"),
    }
    assert all(0.0 <= row["macro_auroc"] <= 1.0 for row in rows)
    compared = [row for row in rows if "difference" in row]
    assert {row["vs"] for row in compared} == {"random_init", "scratch"}
