"""Suite report: per-dataset / per-MESS-domain / MESS-mean numbers next to the paper's.

Aggregation follows MESS's own script (``mess/evaluation/mess_evaluation.py``): the four PAXRay tasks are
averaged into PAXRay-4 (one of the 22 datasets), domain numbers are the mean over a domain's datasets and
the MESS mean is the mean over the 22.  Every metric the evaluators report in common (mIoU, CoI-mIoU,
fwIoU, mACC, pACC) is aggregated the same way; the numbers per dataset are the evaluators' own, unrounded.

Files written by :func:`write_report` (atomically): ``results.csv``, ``results.json`` and ``report.md``
(tables laid out like the paper's Table 1 (MESS) and Table 2 (standard benchmarks), the paper's rows beside
this run's and the difference to SAM-MI, and the per-image counts of points, SAM masks and injected masks
beside the paper's Table 6).
"""
import csv
import io
import json
import math
import os
from functools import lru_cache
from typing import Dict, List, Optional, Sequence, Tuple

from ..utils.atomic_io import write_json_atomic, write_text_atomic
from .sam_mi_stats import STAT_COLUMNS

__all__ = ["load_paper_results", "dataset_labels", "aggregate", "write_report", "paper_row", "METRICS"]

METRICS = ("mIoU", "CoI-mIoU", "fwIoU", "mACC", "pACC")
_PAPER_FILE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "paper_results.json")
_OVSS_COLUMNS = ("A-847", "PC-459", "A-150", "PC-59", "PAS-20", "PAS-20b")


@lru_cache(maxsize=1)
def load_paper_results() -> Dict:
    """The paper's reported numbers (``sam_mi/data/paper_results.json``): ``benchmarks`` (paper label ->
    registered dataset names, suite, MESS domain) and ``tables`` ("table1" ... "table11", each with caption,
    columns and rows of ``{"method", "values": {column: number or None}, ...}``)."""
    with open(_PAPER_FILE) as f:
        return json.load(f)


def dataset_labels() -> Dict[str, str]:
    """Registered dataset name -> paper column label (the four PAXRay tasks -> "PAXRay-4")."""
    return {name: label for label, b in load_paper_results()["benchmarks"].items() for name in b["datasets"]}


def paper_row(table: str, method: str, **match) -> Dict:
    """The row of ``table`` (e.g. "table2") whose method is ``method`` and whose other fields equal
    ``match`` (e.g. ``architecture="ViT-B/16"``)."""
    for row in load_paper_results()["tables"][table]["rows"]:
        if row["method"] == method and all(row.get(k) == v for k, v in match.items()):
            return row
    raise KeyError(f"no row {method!r} {match} in {table}")


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else None


def _mean_metrics(rows: Sequence[Dict[str, Optional[float]]]) -> Dict[str, Optional[float]]:
    return {m: _mean([r.get(m) for r in rows]) for m in METRICS}


def aggregate(results: Dict[str, Dict[str, Optional[float]]]) -> Dict:
    """Combine per-dataset metrics into paper columns, MESS domains and the MESS mean.

    Args:
        results: registered dataset name -> the evaluator's ``sem_seg`` metrics.
    Returns:
        ``{"columns": {label: metrics}, "domains": {domain: {"metrics", "count", "of"}},
        "mess_mean": {"metrics", "count", "of"} or None}``.  A paper column appears once all of its
        datasets are in ``results`` (PAXRay-4 needs its four tasks); domain and MESS means are over the
        columns present, with ``count`` / ``of`` saying how many of how many.
    """
    benchmarks = load_paper_results()["benchmarks"]
    columns: Dict[str, Dict] = {}
    for label, bench in benchmarks.items():
        if all(name in results for name in bench["datasets"]):
            columns[label] = _mean_metrics([results[name] for name in bench["datasets"]])
    mess_labels = [label for label, b in benchmarks.items() if b["suite"] == "mess"]
    domains: Dict[str, Dict] = {}
    for label in mess_labels:
        domains.setdefault(benchmarks[label]["domain"], []).append(label)
    domain_rows = {
        domain: {"metrics": _mean_metrics([columns[c] for c in labels if c in columns]),
                 "count": sum(c in columns for c in labels), "of": len(labels)}
        for domain, labels in domains.items()
        if any(c in columns for c in labels)
    }
    present = [columns[c] for c in mess_labels if c in columns]
    mess_mean = {"metrics": _mean_metrics(present), "count": len(present), "of": len(mess_labels)} if present else None
    return {"columns": columns, "domains": domain_rows, "mess_mean": mess_mean}


def _nan_to_none(value):
    """JSON has no NaN: None instead, in nested dicts / lists."""
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    return None if isinstance(value, float) and math.isnan(value) else value


def _fmt(value: Optional[float], digits: int = 2, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _diff(mine: Optional[float], paper: Optional[float]) -> Optional[float]:
    return None if mine is None or paper is None else mine - paper


def _paper_name(row: Dict) -> str:
    return row["method"].replace(" (ours)", "") + " (paper)"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _table2_markdown(columns: Dict[str, Dict], architecture: str) -> List[str]:
    """Standard benchmarks, laid out like the paper's Table 2, for the paper rows of ``architecture``."""
    table = load_paper_results()["tables"]["table2"]
    wanted = ("CAT-Seg", "SAM-MI (ours)")
    refs = [r for r in table["rows"] if r.get("architecture") == architecture and r["method"] in wanted]
    sam_mi = next((r for r in refs if r["method"] == "SAM-MI (ours)"), None)
    header = ["Method", "VLM", "SAM", "Training data", *_OVSS_COLUMNS]
    rows = []
    for r in refs:
        cells = [_fmt(r["values"].get(c), 1) for c in _OVSS_COLUMNS]
        rows.append([_paper_name(r), r["architecture"], "✓" if r["sam"] else "✗", r["training_data"], *cells])
    mine = [columns.get(c, {}).get("mIoU") for c in _OVSS_COLUMNS]
    rows.append(["**This run**", architecture, "", "", *[_fmt(v) for v in mine]])
    if sam_mi is not None:
        rows.append(["Δ vs SAM-MI (paper)", "", "", "",
                     *[_fmt(_diff(v, sam_mi["values"].get(c)), signed=True) for v, c in zip(mine, _OVSS_COLUMNS)]])
    out = ["## Table 2 — standard OVSS benchmarks (mIoU, %)", "", f"_{table['caption']}_", ""]
    out += _md_table(header, rows)
    out += ["", "PAS-20b is not reported in the paper (– in its rows)."]
    return out


def _table6_markdown(results: Dict[str, Dict], stats: Dict[str, Dict]) -> List[str]:
    """Points, SAM masks and injected masks per image of every evaluated dataset, beside Table 6."""
    table, labels = load_paper_results()["tables"]["table6"], dataset_labels()
    rows = []
    for name in results:
        counts = stats.get(name) or {}
        label = labels.get(name)
        rows.append([f"`{name}`", label or "", _fmt(counts.get("points_per_image"), 1),
                     _fmt(_paper_points(label), 0), _fmt(counts.get("sam_masks_per_image"), 1),
                     _fmt(counts.get("injected_masks_per_image"), 1), str(counts.get("images", "–"))])
    out = ["## Table 6 — TSPP points, SAM masks and injected masks per image", "", f"_{table['caption']}_", ""]
    out += _md_table(["Dataset", "Paper column", "Points / image", "Paper (Table 6)", "SAM masks / image",
                      "Injected masks / image", "Images"], rows)
    out += ["", "Counts are summed over the views of an image (every sliding window and the global view when "
            "INFERENCE.SLIDING_WINDOW is on), then averaged over images; injected masks count 0 for an image "
            "whose masks were not injected (no SAM mask, or DMI disabled). – = not reported."]
    return out


def _table1_markdown(summary: Dict) -> List[str]:
    """MESS, laid out like the paper's Table 1, with the domain means below."""
    table = load_paper_results()["tables"]["table1"]
    cols, domains_of = table["columns"], table["column_domains"]
    refs = [r for r in table["rows"] if r["method"] in ("Grounded-SAM", "SAM-MI (ours)")]
    sam_mi = paper_row("table1", "SAM-MI (ours)")
    columns, mess_mean = summary["columns"], summary["mess_mean"]
    mine = [columns.get(c, {}).get("mIoU") for c in cols]
    mine_mean = mess_mean["metrics"]["mIoU"] if mess_mean else None
    rows = [["_domain_", *[domains_of[c] for c in cols], ""]]
    rows += [[_paper_name(r), *[_fmt(r["values"][c]) for c in cols], _fmt(r["mean"])] for r in refs]
    rows.append(["**This run**", *[_fmt(v) for v in mine], _fmt(mine_mean)])
    diffs = [_fmt(_diff(v, sam_mi["values"][c]), signed=True) for v, c in zip(mine, cols)]
    rows.append(["Δ vs SAM-MI (paper)", *diffs, _fmt(_diff(mine_mean, sam_mi["mean"]), signed=True)])
    out = ["## Table 1 — MESS (mIoU incl. background, %)", "", f"_{table['caption']}_", ""]
    out += _md_table(["Method", *cols, "Mean"], rows)
    if mess_mean and mess_mean["count"] < mess_mean["of"]:
        out += ["", f"This run's Mean is over {mess_mean['count']} of {mess_mean['of']} datasets."]

    # Domain means: the paper gives none, so they are computed from its per-dataset values.
    domain_names = list(dict.fromkeys(domains_of[c] for c in cols))
    drows = []
    for r in refs:
        values = [_mean([r["values"][c] for c in cols if domains_of[c] == d]) for d in domain_names]
        drows.append([_paper_name(r), *[_fmt(v) for v in values], _fmt(r["mean"])])
    mine_dom = [summary["domains"].get(d, {}).get("metrics", {}).get("mIoU") for d in domain_names]
    drows.append(["**This run**", *[_fmt(v) for v in mine_dom], _fmt(mine_mean)])
    paper_dom = [_mean([sam_mi["values"][c] for c in cols if domains_of[c] == d]) for d in domain_names]
    drows.append(["Δ vs SAM-MI (paper)", *[_fmt(_diff(m, p), signed=True) for m, p in zip(mine_dom, paper_dom)],
                  _fmt(_diff(mine_mean, sam_mi["mean"]), signed=True)])
    out += ["", "### MESS domains (mean mIoU over each domain's datasets)", ""]
    out += _md_table(["Method", *domain_names, "Mean"], drows)
    return out


def _paper_points(label: Optional[str]) -> Optional[float]:
    """The paper's Table 6 points per image for a paper column label, or None."""
    value = paper_row("table6", "TSPP average points per image")["values"].get(label) if label else None
    return None if value is None else float(value)


def _csv_rows(results: Dict[str, Dict], summary: Dict, architecture: str, stats: Dict[str, Dict]) -> List[Dict]:
    labels, bench = dataset_labels(), load_paper_results()["benchmarks"]
    mess_ref = paper_row("table1", "SAM-MI (ours)")
    try:
        ovss_ref = paper_row("table2", "SAM-MI (ours)", architecture=architecture)["values"]
    except KeyError:
        ovss_ref = {}

    def paper_value(label: Optional[str]) -> Optional[float]:
        if label is None:
            return None
        return mess_ref["values"].get(label) if bench[label]["suite"] == "mess" else ovss_ref.get(label)

    def row(level, name, label, suite, domain, metrics, paper, counts=None):
        out = {"level": level, "name": name, "label": label or "", "suite": suite or "", "domain": domain or ""}
        out.update({m: metrics.get(m) for m in METRICS})
        out["paper_SAM-MI_mIoU"] = paper
        out["diff_mIoU"] = _diff(metrics.get("mIoU"), paper)
        out.update({c: (counts or {}).get(c) for c in STAT_COLUMNS})
        out["paper_points_per_image"] = _paper_points(label) if counts is not None else None
        return out

    rows = []
    for name, metrics in results.items():
        label = labels.get(name)
        info = bench.get(label, {}) if label else {}
        one_to_one = label is not None and len(info["datasets"]) == 1
        rows.append(row("dataset", name, label, info.get("suite"), info.get("domain"), metrics,
                        paper_value(label) if one_to_one else None, stats.get(name, {})))
    for label, metrics in summary["columns"].items():
        if len(bench[label]["datasets"]) > 1:  # PAXRay-4
            rows.append(row("combined", label, label, "mess", bench[label]["domain"], metrics, paper_value(label)))
    for domain, d in summary["domains"].items():
        rows.append(row("domain", domain, "", "mess", domain, d["metrics"], None))
    if summary["mess_mean"]:
        rows.append(row("mean", f"MESS mean ({summary['mess_mean']['count']}/{summary['mess_mean']['of']})", "Mean",
                        "mess", "", summary["mess_mean"]["metrics"], mess_ref["mean"]))
    return rows


def write_report(
    output_dir: str,
    results: Dict[str, Dict[str, Optional[float]]],
    skipped: Optional[Dict[str, str]] = None,
    failed: Optional[Dict[str, str]] = None,
    architecture: str = "ViT-B/16",
    title: str = "SAM-MI evaluation",
    stats: Optional[Dict[str, Dict[str, float]]] = None,
) -> Tuple[str, str, str]:
    """Write ``results.csv``, ``results.json`` and ``report.md`` into ``output_dir`` (each atomically).

    Args:
        results: dataset name -> the evaluator's metrics (as stored per dataset).
        skipped / failed: dataset name -> reason (with the preparation command for skipped ones).
        architecture: CLIP architecture of the model ("ViT-B/16" or "ViT-L/14"): picks the paper rows.
        stats: dataset name -> SAM-MI counts per image (``SAMMIStatsEvaluator``), for the Table 6 columns.
    Returns:
        the three paths.
    """
    skipped, failed, stats = skipped or {}, failed or {}, stats or {}
    os.makedirs(output_dir, exist_ok=True)
    summary = aggregate(results)
    rows = _csv_rows(results, summary, architecture, stats)
    csv_path = os.path.join(output_dir, "results.csv")
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["level", "name"])
    writer.writeheader()
    writer.writerows([{k: ("" if v is None else v) for k, v in r.items()} for r in rows])
    write_text_atomic(csv_path, buffer.getvalue())

    json_path = os.path.join(output_dir, "results.json")
    payload = {"architecture": architecture, "datasets": results, "sam_mi": {n: stats.get(n, {}) for n in results},
               "summary": summary, "rows": rows, "skipped": skipped, "failed": failed}
    write_json_atomic(json_path, _nan_to_none(payload))

    labels, bench = dataset_labels(), load_paper_results()["benchmarks"]
    suites = {bench[labels[n]]["suite"] for n in results if n in labels}
    lines = [f"# {title}", "", f"CLIP architecture: {architecture} (compared with the paper's {architecture} rows). "
             f"{len(results)} dataset(s) evaluated, {len(skipped)} skipped, {len(failed)} failed.", ""]
    if "ovss" in suites:
        lines += _table2_markdown(summary["columns"], architecture) + [""]
    if "mess" in suites:
        lines += _table1_markdown(summary) + [""]
    others = [n for n in results if n not in labels or bench[labels[n]]["suite"] not in ("ovss", "mess")]
    if others:
        lines += ["## Other datasets", ""]
        lines += _md_table(["Dataset", *METRICS], [[n, *[_fmt(results[n].get(m)) for m in METRICS]] for n in others])
        lines.append("")
    if results:
        lines += _table6_markdown(results, stats) + [""]
    if skipped or failed:
        lines += ["## Not evaluated", ""]
        lines += [f"- `{n}` skipped: {reason}" for n, reason in skipped.items()]
        lines += [f"- `{n}` FAILED: {reason}" for n, reason in failed.items()]
        lines.append("")
    md_path = os.path.join(output_dir, "report.md")
    write_text_atomic(md_path, "\n".join(lines))
    return csv_path, json_path, md_path
