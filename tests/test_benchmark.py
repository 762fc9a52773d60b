"""tools/benchmark_latency.py runs on the CPU and reports per-stage times, counts and the two ratios."""
import json
import os
import subprocess
import sys

from conftest import REPO


def test_latency_benchmark_reports_stages_and_ratios(tmp_path):
    out = tmp_path / "latency.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools/benchmark_latency.py"), "--config-file",
         os.path.join(REPO, "configs/tiny/sam_mi_tiny_stage2.yaml"), "--iters", "1", "--warmup", "0",
         "--num-images", "1", "--image-size", "128", "160", "--json", str(out), "--permissive-filters",
         "MODEL.WEIGHTS", ""],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"learned", "grid", "random"}
    grid, learned, rand = (report["results"][m] for m in ("grid", "learned", "random"))
    for r in (grid, learned, rand):
        stages = ["clip", "tspp", "sam_encoder", "sam_decoding", "smagg", "cost_head"]
        assert all(r[f"{k}_ms"] > 0 for k in stages + ["total"])
        assert r["total_ms"] >= sum(r[f"{k}_ms"] for k in stages) * 0.99 and r["other_ms"] >= -0.01 * r["total_ms"]
    assert grid["points_per_image"] == 16 * 16  # the tiny grid: every point
    assert rand["points_per_image"] == 64
    assert 0 < learned["points_per_image"] < 256  # calibrated to --expected-points (41) on random weights
    assert all(r["sam_masks_per_image"] > 0 for r in (grid, learned, rand))  # masks flow: SMAgg / DMI timed
    assert report["ratios"]["grid_over_learned"] == grid["total_ms"] / learned["total_ms"]
    assert "learned_over_encoders" in report["ratios"] and "grid_over_learned" in proc.stdout


def test_stage_spans_come_from_the_models_forward(synthetic_root):
    """The benchmark's stages are spans the model opens itself: a plain forward under a StageTimer fills them,
    and the same spans appear in a torch.profiler trace."""
    import torch
    from detectron2.modeling import build_model

    from conftest import tiny_cfg
    from sam_mi.utils.stage_timer import StageTimer

    torch.manual_seed(0)
    model = build_model(tiny_cfg()).eval()
    x = {"image": torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8), "height": 96, "width": 128}
    with StageTimer() as timer:
        model([x])
    assert {"clip", "tspp", "sam_encoder", "sam_decoding", "cost_head"} <= set(timer.seconds)
    assert timer.calls["sam_decoding"] == 1 and all(v > 0 for v in timer.seconds.values())
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        model([x])
    names = {e.key for e in prof.key_averages()}
    assert {"sam_mi/clip", "sam_mi/sam_encoder", "sam_mi/cost_head"} <= names
    model([x])  # without a timer the spans cost nothing and record nothing
    assert timer.calls["sam_decoding"] == 1


def test_training_benchmark_reports_table10_columns(tmp_path):
    """tools/benchmark_training.py: baseline vs SAM-MI (fast path on / off) at the same batch, one run."""
    out = tmp_path / "train.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools/benchmark_training.py"), "--iters", "1", "--warmup", "0",
         "--batch", "2", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    base, fast, slow = (results[k] for k in ("w/o SAM (CAT-Seg)", "w/ SAM, fast path", "w/ SAM, fast path off"))
    assert base["frozen_sam_M"] == 0 < fast["frozen_sam_M"] == slow["frozen_sam_M"]
    assert fast["trainable_M"] > base["trainable_M"] and fast["total_M"] > base["total_M"] + fast["frozen_sam_M"] - 1e-6
    assert all(r["ms_per_iter"] > 0 and r["peak_memory_mb"] > 0 for r in results.values())


def test_latency_benchmark_second_pass_reads_the_embedding_cache(tmp_path):
    """--embedding-cache: pass 1 encodes every image and fills the cache, pass 2 hits it and never calls SAM's
    image encoder; --vocabulary prompts with a registered dataset's names."""
    out = tmp_path / "cache.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools/benchmark_latency.py"), "--config-file",
         os.path.join(REPO, "configs/tiny/sam_mi_tiny_stage2.yaml"), "--num-images", "2", "--image-size", "128", "160",
         "--embedding-cache", str(tmp_path / "cache"), "--vocabulary", "voc_2012_test_sem_seg", "--threads", "1",
         "--json", str(out), "MODEL.WEIGHTS", ""],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["vocabulary_size"] == 20 and report["num_images"] == 2 and report["mode"] == "learned"
    first, second = report["embedding_cache"]["first"], report["embedding_cache"]["second"]
    assert (first["cache_misses"], first["cache_hits"], first["encoder_images"]) == (2, 0, 2)
    assert (second["cache_misses"], second["cache_hits"], second["encoder_images"]) == (0, 2, 0)
    assert first["total_ms"] > 0 and second["sam_encoder_ms"] > 0  # the look-up is still inside the span
    assert "second / first total" in proc.stdout


def test_memory_benchmark_chunks_bound_the_aggregator(tmp_path):
    """tools/benchmark_memory.py on the tiny model: one process per (vocabulary, chunk); the per-class parts'
    memory is bounded by MODEL.SAM_MI.AGGREGATOR.CLASS_CHUNK and what must grow with T does."""
    out = tmp_path / "memory.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools/benchmark_memory.py"), "--config-file",
         os.path.join(REPO, "configs/tiny/sam_mi_tiny_stage2.yaml"), "--vocabularies", "8", "64", "--chunks", "0", "2",
         "--image-size", "128", "160", "--json", str(out), "MODEL.WEIGHTS", ""],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    runs = {(r["num_classes"], r["class_chunk"]): r for r in report["runs"]}
    assert set(runs) == {(8, 0), (8, 2), (64, 0), (64, 2)} and "profile_memory" in report["method"]
    for (T, _), r in runs.items():
        assert r["aggregated_classes"] == min(T, 16)  # the tiny PAD_LEN: the top 16 classes are aggregated
        assert {"text_encoding", "clip", "sam_encoder", "cost_head", "cost_volume", "aggregation", "decoder",
                "score_maps"} <= set(r["spans"])
        assert r["tensors_mb"]["score_maps"] == T * 128 * 160 * 4 / 2**20 and r["score_maps_shape"] == [T, 128, 160]
        # the scores handed to the evaluator are alive at the end: the trace must have seen them
        assert r["peak_mb"] >= r["final_mb"] >= r["tensors_mb"]["score_maps"]
        assert r["max_rss_mb"] > r["peak_mb"] and r["sliding_window"]
    # chunks of 2 classes: the aggregator's working set is a fraction of all 16 classes at once ...
    assert runs[64, 2]["spans"]["cost_head"]["rise_mb"] < 0.5 * runs[64, 0]["spans"]["cost_head"]["rise_mb"]
    # ... and does not grow with the vocabulary past the chunk, while text embeddings and score maps do
    assert runs[64, 2]["spans"]["aggregation"]["rise_mb"] < 2 * runs[8, 2]["spans"]["aggregation"]["rise_mb"]
    assert runs[64, 2]["spans"]["text_encoding"]["rise_mb"] > 4 * runs[8, 2]["spans"]["text_encoding"]["rise_mb"]
    # --chunks sets the TSPP head's chunk too (tspp_context.py): its span shrinks with it
    assert all(r["tspp_class_chunk"] == chunk for (_, chunk), r in runs.items())
    assert runs[64, 2]["spans"]["tspp"]["rise_mb"] < 0.5 * runs[64, 0]["spans"]["tspp"]["rise_mb"]
