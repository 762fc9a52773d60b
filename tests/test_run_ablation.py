"""tools/run_ablation.py: every row of Tables 3-9 and Fig. 8 plans stage 1 -> stage 2 -> evaluation, Table 7
and 8 rows train their own stage 1 and stage 2 loads it, steps resume, and the paper's line is printed."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

spec = importlib.util.spec_from_file_location("run_ablation", os.path.join(REPO, "tools", "run_ablation.py"))
run_ablation = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_ablation)
ROWS = run_ablation.ROWS
PAPER_ROWS = [n for n in ROWS if n.startswith(("t3_", "t4_", "t5_", "t6_", "t7_", "t8_", "t9_", "f8_"))]


def _arg(command, key):
    return command[command.index(key) + 1]


def test_dry_run_prints_every_rows_commands(tmp_path):
    out = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "run_ablation.py"), *PAPER_ROWS, "--dry-run",
         "--num-gpus", "4", "--output-root", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=REPO),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    blocks = out.stdout.split("== ")[1:]
    assert [b.split()[0] for b in blocks] == PAPER_ROWS
    for name, block in zip(PAPER_ROWS, blocks):
        row = ROWS[name]
        assert f"[stage1] would run: " in block and "tools/train_net.py" in block, name
        assert f"[stage2] would run: " in block and f"--config-file {row.stage2} --num-gpus 4" in block, name
        assert "[eval] would run: " in block and "tools/eval_all.py" in block and "--suite ovss" in block, name
        for table, method in row.paper:
            assert f"| {method} (paper) |" in block, (name, table)
    assert not any(tmp_path.iterdir())  # a dry run writes nothing


def test_every_paper_ablation_row_has_a_runner_row():
    from sam_mi.evaluation.report import load_paper_results

    covered = {(t, m) for r in ROWS.values() for t, m in r.paper}
    tables = load_paper_results()["tables"]
    for key in ("table3", "table4", "table5", "table6", "table7", "table8", "table9"):
        for paper_row in tables[key]["rows"]:
            assert (key, paper_row["method"]) in covered, (key, paper_row["method"])
    assert {f"f8_alpha_sma_{a}" for a in ("0.3", "0.4", "0.5", "0.6", "0.7")} <= set(ROWS)


@pytest.mark.parametrize("name", [n for n in ROWS if n.startswith(("t7_", "t8_"))])
def test_table7_and_8_rows_train_their_own_stage1(name, tmp_path):
    row = ROWS[name]
    steps = run_ablation.plan(row, 4, str(tmp_path))
    assert [s.name for s in steps] == ["stage1", "stage2", "eval"]
    stage1, stage2, evaluation = steps
    out1 = _arg(stage1.command, "OUTPUT_DIR")
    assert _arg(stage2.command, "MODEL.WEIGHTS") == os.path.join(out1, "model_final.pth")
    assert _arg(evaluation.command, "--weights") == os.path.join(_arg(stage2.command, "OUTPUT_DIR"), "model_final.pth")
    cfg1, cfg2 = run_ablation.load_config(row.stage1), run_ablation.load_config(row.stage2)
    assert cfg1.MODEL.SAM_MI.TRAIN_STAGE == 1 and cfg2.MODEL.SAM_MI.TRAIN_STAGE == 2
    # the stage-2 config on its own (tools/train_net.py by hand) also loads its own stage 1
    assert cfg2.MODEL.WEIGHTS == os.path.join(cfg1.OUTPUT_DIR, "model_final.pth")
    t1, t2 = cfg1.MODEL.SAM_MI.TSPP, cfg2.MODEL.SAM_MI.TSPP
    assert (t1.M_P, t1.G_P, t1.LAMBDA_MSE) == (t2.M_P, t2.G_P, t2.LAMBDA_MSE)
    if name in ("t7_mp10_gp5", "t8_lambda_mse_0.5"):  # the default row is the main model
        assert row.stage1 == run_ablation.MAIN1
    else:
        main = run_ablation.load_config(run_ablation.MAIN1).MODEL.SAM_MI.TSPP
        assert (t1.M_P, t1.G_P, t1.LAMBDA_MSE) != (main.M_P, main.G_P, main.LAMBDA_MSE)
    if name.startswith("t8_"):
        assert "coco_2017_test_stuff_all_sem_seg" in _arg(evaluation.command, "--suite")  # Table 8's column


def test_stage1_outputs_are_distinct_per_setting(tmp_path):
    seen = {}
    for name, row in ROWS.items():
        out1 = _arg(run_ablation.plan(row, 1, str(tmp_path))[0].command, "OUTPUT_DIR") if row.stage1 else None
        seen.setdefault(out1, set()).add(row.stage1)
    assert all(len(v) == 1 for v in seen.values())  # one stage-1 config per stage-1 output folder
    assert len([o for o in seen if o]) == 7  # main + four Table 7 + two Table 8 settings


def test_table3_wo_tspp_is_the_uniform_grid_experiment():
    wo, grid = run_ablation.load_config(ROWS["t3_wo_tspp"].stage2), run_ablation.load_config(ROWS["t5_sampling_grid"].stage2)
    assert wo.MODEL.SAM_MI.TSPP.ENABLED and wo.MODEL.SAM_MI.TSPP.SAMPLING == "grid"
    assert wo == grid  # same experiment, same outputs
    extra = run_ablation.load_config(ROWS["extra_wo_tspp_head"].stage2)
    assert not extra.MODEL.SAM_MI.TSPP.ENABLED and extra.MODEL.WEIGHTS == "" and ROWS["extra_wo_tspp_head"].stage1 is None


def _results(path, skipped=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    payload = {"datasets": {"ade20k_150_test_sem_seg": {"mIoU": 30.0}},
               "summary": {"columns": {"A-847": {"mIoU": 12.0}, "A-150": {"mIoU": 30.0}}},
               "skipped": skipped or {}, "failed": {}}
    with open(path, "w") as f:
        json.dump(payload, f)


def test_steps_resume_and_the_row_line_is_written(tmp_path, monkeypatch, capsys):
    row = ROWS["t7_mp8_gp5"]
    root = str(tmp_path)
    steps = run_ablation.plan(row, 2, root)
    assert not any(s.done for s in steps)
    os.makedirs(os.path.dirname(steps[0].output))
    open(steps[0].output, "w").close()  # stage 1 finished earlier
    calls = []

    def fake_run(command, cwd):
        calls.append(command)
        if "train_net.py" in command[1]:
            out = _arg(command, "OUTPUT_DIR")
            os.makedirs(out, exist_ok=True)
            open(os.path.join(out, "model_final.pth"), "w").close()
        else:
            _results(os.path.join(_arg(command, "--output"), "results.json"))
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(run_ablation.subprocess, "run", fake_run)
    assert run_ablation.main(["t7_mp8_gp5", "--num-gpus", "2", "--output-root", root]) == 0
    assert [os.path.basename(c[1]) for c in calls] == ["train_net.py", "eval_all.py"]  # stage 1 skipped
    assert "[stage1] done, skipped" in capsys.readouterr().out
    report = os.path.join(os.path.dirname(steps[2].output), "ablation_t7_mp8_gp5.md")
    text = open(report).read()
    assert "| m_p=8, g_p=5 (paper) | 12.4 |" in text and "| this run | 12.00 |" in text and "| Δ | -0.40 |" in text
    calls.clear()
    assert run_ablation.main(["t7_mp8_gp5", "--output-root", root]) == 0 and calls == []  # all done
    # an evaluation that skipped datasets is not done: eval_all is called again (it resumes per dataset)
    _results(steps[2].output, skipped={"context_59_test_sem_seg": "not prepared"})
    assert [s.done for s in run_ablation.plan(row, 2, root)] == [True, True, False]


def test_failed_step_stops_the_row(tmp_path, monkeypatch):
    monkeypatch.setattr(run_ablation.subprocess, "run", lambda c, cwd: subprocess.CompletedProcess(c, 3))
    assert run_ablation.main(["t3_wo_dmi", "--output-root", str(tmp_path)]) == 3
    with pytest.raises(SystemExit):
        run_ablation.main(["no_such_row"])
