#!/usr/bin/env python
r"""Run one row of the paper's ablations (Tables 3-9, Fig. 8) end to end, resumable at every step.

    python tools/run_ablation.py --list                          # the rows and what they run
    python tools/run_ablation.py t7_mp8_gp5 --num-gpus 4         # stage 1, stage 2, OVSS suite, table line
    python tools/run_ablation.py t7_mp8_gp5 --dry-run            # print the commands only
    python tools/run_ablation.py t3_wo_dmi --output-root out/    # all outputs under out/

A row runs (1) its stage 1 with ``tools/train_net.py`` when it has one (Table 7 / 8 rows train their own
TSPP; rows that do not change TSPP share the main model's stage 1), (2) stage 2 with ``tools/train_net.py``
initialised from that stage 1's ``model_final.pth`` (``MODEL.WEIGHTS``), (3) the evaluation with
``tools/eval_all.py`` (the OVSS suite; Table 8 rows add COCO-Stuff validation, the table's column), then
prints the row's line of the paper's table beside the paper's values and writes it to
``<stage 2 output>/eval/ablation_<row>.md``.  A training step whose ``model_final.pth`` exists is skipped
(an interrupted one resumes from its last checkpoint, ``--resume``); the evaluation is skipped once its
``results.json`` lists no skipped or failed dataset (eval_all itself resumes per dataset).

Outputs go where each config's ``OUTPUT_DIR`` says (``output/...``) or, with ``--output-root R``, to
``R/<basename of OUTPUT_DIR>``.  Rows that are the same experiment share their outputs (e.g. every
table's default row is the main model ``sam_mi``; Table 3 "w/o TSPP" is Table 5's uniform-grid row).
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, List, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CFG = "configs/coco-stuff-171"
ABL = f"{CFG}/ablations"
MAIN1, MAIN2 = f"{CFG}/sam_mi_vitb16_384_stage1.yaml", f"{CFG}/sam_mi_vitb16_384_stage2.yaml"
OVSS, OVSS_COCO = "ovss", "ovss,coco_2017_test_stuff_all_sem_seg"


@dataclass(frozen=True)
class Row:
    """One line of a paper table: the configs that produce it and where the paper's values are.

    stage1: config of the TSPP pre-training (Sec. 3.5 stage 1) or None when the row has no TSPP to train.
    paper: (table key in sam_mi/data/paper_results.json, method) pairs this row reproduces.
    """

    name: str
    stage2: str
    stage1: Optional[str] = MAIN1
    paper: Tuple[Tuple[str, str], ...] = ()
    suite: str = OVSS
    note: str = ""


_MAIN_PAPER = (("table3", "SAM-MI"), ("table4", "low + high (SAM-MI)"), ("table5", "TSPP (ours)"),
               ("table6", "TSPP average points per image"), ("table7", "m_p=10, g_p=5 (default)"),
               ("table8", "lambda_mse=0.5 (default)"), ("table9", "Original SAM-H"))


def _main(name: str, note: str) -> Row:
    return Row(name, MAIN2, MAIN1, _MAIN_PAPER, OVSS_COCO, note)


def _t7(m_p: int, g_p: int, method: str) -> Row:
    n = f"t7_mp{m_p}_gp{g_p}"
    return Row(n, f"{ABL}/{n}_stage2.yaml", f"{ABL}/{n}_stage1.yaml", (("table7", method),))


def _t8(lam: str) -> Row:
    n = f"t8_lambda_mse_{lam}"
    return Row(n, f"{ABL}/{n}_stage2.yaml", f"{ABL}/{n}_stage1.yaml", (("table8", f"lambda_mse={lam}"),), OVSS_COCO)


def _f8(alpha: str) -> Row:
    text = {"0.3": "A-847 -0.3 mIoU vs alpha_sma = 0.5", "0.7": "A-847 -0.5 mIoU vs alpha_sma = 0.5"}
    note = "Fig. 8 is a plot: no values in the text" + (f"; the text gives {text[alpha]}" if alpha in text else "")
    return Row(f"f8_alpha_sma_{alpha}", f"{ABL}/f8_alpha_sma_{alpha}.yaml", note=note)


ROWS: Dict[str, Row] = {r.name: r for r in [
    _main("sam_mi", "the full model: the default row of Tables 3-9 and Fig. 8"),
    _main("t3_sam_mi", "= sam_mi"),
    Row("t3_wo_dmi", f"{ABL}/t3_wo_dmi.yaml", paper=(("table3", "w/o DMI"), ("table4", "none (w/o DMI)"))),
    Row("t3_wo_smagg", f"{ABL}/t3_wo_smagg.yaml", paper=(("table3", "w/o SMAgg"),)),
    Row("t3_wo_tspp", f"{ABL}/t3_wo_tspp.yaml", paper=(("table3", "w/o TSPP"), ("table5", "Uniform Grid (32x32)")),
        note="TSPP kept, SAM prompted with the 32x32 grid (= t5_sampling_grid)"),
    Row("t4_dmi_none", f"{ABL}/t3_wo_dmi.yaml", paper=(("table4", "none (w/o DMI)"),), note="= t3_wo_dmi"),
    Row("t4_dmi_low_only", f"{ABL}/t4_dmi_low_only.yaml", paper=(("table4", "low"),)),
    Row("t4_dmi_high_only", f"{ABL}/t4_dmi_high_only.yaml", paper=(("table4", "high"),)),
    _main("t4_dmi_low_high", "= sam_mi"),
    Row("t5_sampling_grid", f"{ABL}/t5_sampling_grid.yaml",
        paper=(("table5", "Uniform Grid (32x32)"), ("table3", "w/o TSPP"))),
    Row("t5_sampling_random64", f"{ABL}/t5_sampling_random64.yaml", paper=(("table5", "Random Sampling"),)),
    _main("t5_tspp", "= sam_mi"),
    _main("t6_points", "= sam_mi (points per image come from its evaluation)"),
    _t7(12, 5, "m_p=12, g_p=5"), _t7(10, 4, "m_p=10, g_p=4"), _t7(10, 6, "m_p=10, g_p=6"),
    _t7(8, 5, "m_p=8, g_p=5"),
    _main("t7_mp10_gp5", "= sam_mi"),
    _t8("0.1"), _t8("1.0"),
    _main("t8_lambda_mse_0.5", "= sam_mi"),
    _main("t9_sam_h", "= sam_mi"),
    Row("t9_hq_sam_h", f"{ABL}/t9_hq_sam_h.yaml", paper=(("table9", "HQ-SAM-H"),)),
    Row("t9_sam2_l", f"{ABL}/t9_sam2_l.yaml", paper=(("table9", "SAM2-L"),)),
    Row("t9_fastsam", f"{ABL}/t9_fastsam.yaml", paper=(("table9", "FastSAM"),)),
    Row("t9_mobile_sam", f"{ABL}/t9_mobile_sam.yaml", paper=(("table9", "MobileSAM"),)),
    _f8("0.3"), _f8("0.4"),
    _main("f8_alpha_sma_0.5", "= sam_mi (Fig. 8 is a plot: no values in the text)"),
    _f8("0.6"), _f8("0.7"),
    Row("extra_wo_tspp_head", f"{ABL}/extra_wo_tspp_head.yaml", stage1=None,
        note="not in the paper: no TSPP network, grid prompts, M^text from the raw cost maps"),
]}


@dataclass
class Step:
    name: str  # "stage1", "stage2", "eval"
    command: List[str]
    done: bool
    output: str  # the file whose presence marks the step as done


@lru_cache(maxsize=None)
def load_config(config: str):
    """A config file (path relative to the repository) with its _BASE_ chain resolved, frozen."""
    from detectron2.config import get_cfg

    from sam_mi import add_sam_mi_config

    cfg = get_cfg()
    add_sam_mi_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, config))
    cfg.freeze()
    return cfg


def config_output_dir(config: str) -> str:
    return load_config(config).OUTPUT_DIR


def _output_dir(config: str, output_root: Optional[str]) -> str:
    out = config_output_dir(config)
    return os.path.join(output_root, os.path.basename(os.path.normpath(out))) if output_root else out


def _eval_done(results_json: str) -> bool:
    try:
        with open(results_json) as f:
            payload = json.load(f)
    except (OSError, ValueError):
        return False
    return bool(payload.get("datasets")) and not payload.get("skipped") and not payload.get("failed")


def plan(row: Row, num_gpus: int, output_root: Optional[str] = None, dataset_root: str = "") -> List[Step]:
    """The commands of ``row`` (stage 1 when it has one, stage 2, evaluation), each marked done or not."""
    py = sys.executable
    train = [py, os.path.join("tools", "train_net.py")]
    steps: List[Step] = []
    weights: List[str] = []
    if row.stage1 is not None:
        out1 = _output_dir(row.stage1, output_root)
        final1 = os.path.join(out1, "model_final.pth")
        cmd = train + ["--config-file", row.stage1, "--num-gpus", str(num_gpus), "--resume", "OUTPUT_DIR", out1]
        steps.append(Step("stage1", cmd, os.path.isfile(final1), final1))
        weights = ["MODEL.WEIGHTS", final1]
    out2 = _output_dir(row.stage2, output_root)
    final2 = os.path.join(out2, "model_final.pth")
    cmd = train + ["--config-file", row.stage2, "--num-gpus", str(num_gpus), "--resume", "OUTPUT_DIR", out2] + weights
    steps.append(Step("stage2", cmd, os.path.isfile(final2), final2))
    eval_dir = os.path.join(out2, "eval")
    cmd = [py, os.path.join("tools", "eval_all.py"), "--config-file", row.stage2, "--weights", final2,
           "--output", eval_dir, "--suite", row.suite, "--num-gpus", str(num_gpus)]
    if dataset_root:
        cmd += ["--dataset-root", dataset_root]
    results = os.path.join(eval_dir, "results.json")
    steps.append(Step("eval", cmd, _eval_done(results), results))
    return steps


# ----------------------------------------------------------------------------- the paper's line
def _fmt(v: Optional[float], digits: int = 1, signed: bool = False) -> str:
    if v is None:
        return "–"
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def _last_logged(stage1_dir: str, key: str) -> Optional[float]:
    """The last value of ``key`` in stage 1's metrics.json (None when absent)."""
    last = None
    try:
        with open(os.path.join(stage1_dir, "metrics.json")) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if key in record:
                    last = record[key]
    except OSError:
        return None
    return last


def _final_l_mse(stage1_dir: str, lambda_mse: float) -> Optional[float]:
    """Un-weighted L_mse at the end of stage 1 (Table 8): logged as ``tspp/l_mse`` by the model (older runs:
    the last loss_tspp_mse / lambda_mse)."""
    value = _last_logged(stage1_dir, "tspp/l_mse")
    if value is not None:
        return value
    last = _last_logged(stage1_dir, "loss_tspp_mse")
    return None if last is None or lambda_mse <= 0 else last / lambda_mse


def row_lines(row: Row, results_json: str, stage1_dir: Optional[str] = None, lambda_mse: float = 0.5) -> List[str]:
    """Markdown: for each paper table the row reproduces, the paper's line, this run's line and the
    difference (mIoU in %; Table 6 / 5 point counts when the evaluation reports ``points_per_image``)."""
    from sam_mi.evaluation.report import load_paper_results, paper_row

    try:
        with open(results_json) as f:
            payload = json.load(f)
    except (OSError, ValueError):
        payload = {}
    columns = payload.get("summary", {}).get("columns", {})
    datasets = payload.get("datasets", {})
    labels = {n: label for label, b in load_paper_results()["benchmarks"].items() for n in b["datasets"]}

    def points(label: str) -> Optional[float]:
        values = [m.get("points_per_image") for n, m in datasets.items() if labels.get(n) == label]
        return values[0] if values and values[0] is not None else None

    lines = [f"### {row.name}" + (f" ({row.note})" if row.note else "")]
    if not row.paper:
        lines.append("")
        lines.append("| column | this run |")
        lines.append("|:---|---:|")
        lines += [f"| {c} | {_fmt(m.get('mIoU'), 2)} |" for c, m in columns.items()] or ["| – | – |"]
    for table_key, method in row.paper:
        table = load_paper_results()["tables"][table_key]
        ref = paper_row(table_key, method)
        cols = table["columns"]
        if table_key == "table6":
            mine = [points(c) for c in cols]
        elif table_key == "table8" and stage1_dir:
            # TSPP's own mask output M^text on COCO-Stuff val, evaluated at the end of stage 1 (the stage-1
            # configs score INFERENCE.SCORES "tspp")
            mine = [_last_logged(stage1_dir, "sem_seg/mIoU")]
        else:
            mine = [columns.get(c, {}).get("mIoU") for c in cols]
        paper = [ref["values"].get(c) for c in cols]
        lines += ["", f"{table_key.replace('table', 'Table ')} ({table['metric']}): _{table['caption']}_", "",
                  "| " + " | ".join(["", *cols]) + " |", "|:---" + "|---:" * len(cols) + "|",
                  "| " + " | ".join([f"{method} (paper)", *[_fmt(v) for v in paper]]) + " |",
                  "| " + " | ".join(["this run", *[_fmt(v, 2) for v in mine]]) + " |",
                  "| " + " | ".join(["Δ", *[_fmt(None if m is None or p is None else m - p, 2, True)
                                            for m, p in zip(mine, paper)]]) + " |"]
        if table_key == "table5":
            pts = [points(c) for c in cols]
            lines.append("points per image: " + ", ".join(
                f"{c} paper {_fmt(ref['points'].get(c), 0)} / this run {_fmt(p)}" for c, p in zip(cols, pts)))
        if table_key == "table8" and stage1_dir:
            mse = _final_l_mse(stage1_dir, lambda_mse)
            lines.append(f"final L_mse (1e-3): paper {_fmt(ref.get('l_mse_1e3'))}, this run "
                         f"{_fmt(None if mse is None else mse * 1e3, 2)}")
    return lines


# ----------------------------------------------------------------------------- CLI
def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rows", nargs="*", help="row names (see --list)")
    parser.add_argument("--list", action="store_true", help="list the rows and exit")
    parser.add_argument("--num-gpus", type=int, default=1, help="GPUs for training and evaluation")
    parser.add_argument("--dry-run", action="store_true", help="print the commands (and what is done), run nothing")
    parser.add_argument("--output-root", default="", help="put every output under this folder")
    parser.add_argument("--dataset-root", default="", help="passed to eval_all.py (default: $DETECTRON2_DATASETS)")
    return parser


def list_rows() -> List[str]:
    out = []
    for r in ROWS.values():
        tables = ", ".join(f"{t.replace('table', 'T')}: {m}" for t, m in r.paper) or "–"
        stage1 = "none" if r.stage1 is None else ("shared (main)" if r.stage1 == MAIN1 else os.path.basename(r.stage1))
        out.append(f"{r.name:22s} stage1 {stage1:28s} stage2 {os.path.basename(r.stage2):34s} [{tables}]"
                   + (f"  ({r.note})" if r.note else ""))
    return out


def run_row(row: Row, args) -> int:
    steps = plan(row, args.num_gpus, args.output_root or None, args.dataset_root)
    print(f"== {row.name}" + (f" ({row.note})" if row.note else ""), flush=True)
    for step in steps:
        status = "done, skipped" if step.done else ("would run" if args.dry_run else "running")
        print(f"[{step.name}] {status}: {shlex.join(step.command)}", flush=True)
        if step.done or args.dry_run:
            continue
        rc = subprocess.run(step.command, cwd=REPO).returncode
        if rc != 0:
            print(f"[{step.name}] FAILED (exit {rc}); rerun the same command to resume", flush=True)
            return rc
        if step.name != "eval" and not os.path.isfile(step.output):
            print(f"[{step.name}] finished without {step.output}", flush=True)
            return 1
    results = steps[-1].output
    stage1_dir = os.path.dirname(steps[0].output) if steps[0].name == "stage1" else None
    lambda_mse = load_config(row.stage1 or row.stage2).MODEL.SAM_MI.TSPP.LAMBDA_MSE
    text = "\n".join(row_lines(row, results, stage1_dir, lambda_mse)) + "\n"
    print(text, flush=True)
    if not args.dry_run and os.path.isfile(results):
        from sam_mi.utils.atomic_io import write_text_atomic  # lazy, as the other sam_mi imports of this CLI

        path = os.path.join(os.path.dirname(results), f"ablation_{row.name}.md")
        write_text_atomic(path, text)
        print(f"written: {path}", flush=True)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    if args.list:
        print("\n".join(list_rows()))
        return 0
    if not args.rows:
        get_parser().error("give a row name (see --list)")
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        get_parser().error(f"unknown row(s) {unknown}; see --list")
    for name in args.rows:
        rc = run_row(ROWS[name], args)
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
