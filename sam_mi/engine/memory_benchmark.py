"""Peak memory of SAM-MI's evaluation of one image against the vocabulary size and the class chunk
(``MODEL.SAM_MI.AGGREGATOR.CLASS_CHUNK`` and ``MODEL.SAM_MI.TSPP.CLASS_CHUNK``, set together), the logic of
tools/benchmark_memory.py.

One configuration = one model, one vocabulary, one chunk size, one image, in a fresh process
(:func:`run_isolated`), so that the process's peak resident size belongs to it alone. Inside, the vocabulary's
text embeddings are computed first (what an evaluation does once per dataset; then cached), then the image is
evaluated as ``tools/train_net.py --eval-only`` would (``model([{"image": ...}])``, the sliding-window protocol
by default), all under one :class:`~sam_mi.utils.memory_trace.TensorMemoryTrace`. Reported per span of the
forward (sam_mi/utils/stage_timer.py): ``text_encoding``, ``clip`` (image), ``tspp`` (cost maps + TSPP),
``sam_encoder``, ``sam_decoding``, ``smagg``, ``cost_head`` (DMI + aggregator) and inside it ``cost_volume``
(cosine cost volume, top-``PAD_LEN`` selection, embedding), ``aggregation`` (spatial + class blocks) and
``decoder`` (upsampling decoder), then ``score_maps`` (sigmoid, merge of the views, resize to the image): the
peak of live tensor bytes while the span ran and its rise over the level at which it began, in MiB, above the
weights. Beside them: the sizes of the tensors that grow with the vocabulary by nature (text embeddings
[T, P, D] and the score maps [T, H, W] handed to the evaluator), and the process's peak resident size.
"""
import json
import os
import subprocess
import sys
import tempfile
from typing import Dict, Optional, Sequence, Tuple

import torch

from ..utils.memory_trace import TensorMemoryTrace, current_rss_mb, max_rss_mb
from ..utils.stage_timer import stage
from .benchmarking import benchmark_cfg, random_image, vocabulary_from_spec

__all__ = ["SPANS", "MEMORY_METHOD", "measure_memory", "run_isolated"]

SPANS = ("text_encoding", "clip", "tspp", "sam_encoder", "sam_decoding", "smagg", "cost_head", "cost_volume",
         "aggregation", "decoder", "score_maps")
MEMORY_METHOD = {
    "cpu": "torch.profiler(profile_memory=True): c10 allocator events replayed in time order (live tensor bytes "
           "allocated during the run; weights excluded); one process per configuration, whose ru_maxrss is "
           "reported beside",
    "cuda": "torch.cuda.max_memory_allocated after reset_peak_memory_stats (overall), torch.profiler memory "
            "events (per span); one process per configuration",
}
# The evaluation protocol (sam_mi/evaluation/suite.py PROTOCOL_OPTS): sliding window, class pooling 1x1.
_SLIDING_WINDOW_OPTS = ["MODEL.SAM_MI.INFERENCE.SLIDING_WINDOW", True, "MODEL.SAM_MI.AGGREGATOR.POOLING_SIZES", [1, 1]]
_WHOLE_IMAGE_OPTS = ["MODEL.SAM_MI.INFERENCE.SLIDING_WINDOW", False]


def measure_memory(
    config_file: str,
    vocabulary: str,
    class_chunk: int,
    opts: Sequence = (),
    image_size: Tuple[int, int] = (512, 683),
    sliding_window: bool = True,
    random_weights: bool = True,
    sam_image_size: Optional[int] = None,
    permissive_filters: bool = True,
    device: Optional[str] = None,
    threads: Optional[int] = None,
) -> Dict:
    """Memory of one evaluation (module docstring) in this process; see :func:`run_isolated` for a fresh one.

    Args:
        vocabulary: a registered dataset, a JSON list of names, or an integer N (synthetic names).
        class_chunk: ``MODEL.SAM_MI.AGGREGATOR.CLASS_CHUNK`` and ``MODEL.SAM_MI.TSPP.CLASS_CHUNK`` (0 = all
            classes at once); ``opts`` may set the TSPP head's apart.
        image_size: (H, W) of the random test image (ADE20K's typical 512 x 683 by default).
        sliding_window: the evaluation protocol (4 crops + the global view, pooling 1x1); else whole image.
        opts: further config overrides, applied last.
    """
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    if threads:
        torch.set_num_threads(int(threads))
    protocol = _SLIDING_WINDOW_OPTS if sliding_window else _WHOLE_IMAGE_OPTS
    chunks = ["MODEL.SAM_MI.AGGREGATOR.CLASS_CHUNK", int(class_chunk), "MODEL.SAM_MI.TSPP.CLASS_CHUNK", int(class_chunk)]
    cfg = benchmark_cfg(config_file, protocol + chunks + list(opts), device, random_weights, sam_image_size,
                        permissive_filters)
    names = vocabulary_from_spec(vocabulary)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model.set_vocabulary(names)
    model.clip.clear_text_cache()
    image = random_image(*image_size)
    x = {"image": image, "height": image.shape[-2], "width": image.shape[-1]}
    rss_before = current_rss_mb()
    with TensorMemoryTrace(model.device) as trace:
        with torch.inference_mode(), stage("text_encoding"):
            text = model.clip.encode_text(names)  # [T, P, D], cached for the forward as in an evaluation
        out = model([x])[0]
    spans = trace.spans()
    aggregator = model.cost_head.aggregator
    mib = float(2**20)
    return {
        "vocabulary": str(vocabulary),
        "num_classes": len(names),
        "aggregated_classes": min(len(names), aggregator.pad_len) if aggregator.pad_len > 0 else len(names),
        "class_chunk": aggregator.class_chunk,
        "tspp_class_chunk": cfg.MODEL.SAM_MI.TSPP.CLASS_CHUNK,
        "peak_mb": trace.peak_bytes / mib,
        "final_mb": trace.final_bytes / mib,
        "spans": {k: spans[k] for k in SPANS if k in spans},
        "tensors_mb": {
            "text_embeddings": text.numel() * text.element_size() / mib,
            "score_maps": out["sem_seg"].numel() * out["sem_seg"].element_size() / mib,
        },
        "score_maps_shape": list(out["sem_seg"].shape),
        "sam_masks": out["sam_mi"].get("num_sam_masks"),
        "rss_before_mb": rss_before,
        "max_rss_mb": max_rss_mb(),
        "device": str(model.device),
        "method": MEMORY_METHOD["cuda" if model.device.type == "cuda" else "cpu"],
        "sliding_window": bool(sliding_window),
        "image_size": list(image_size),
        "sam": {"type": cfg.MODEL.SAM_MI.SAM.MODEL_TYPE, "image_size": cfg.MODEL.SAM_MI.SAM.IMAGE_SIZE}
        if cfg.MODEL.SAM_MI.SAM.ENABLED else None,
        "torch_threads": torch.get_num_threads(),
    }


def run_isolated(timeout: Optional[float] = None, **kwargs) -> Dict:
    """:func:`measure_memory` (same keyword arguments) in a fresh Python process; its result.

    Raises:
        RuntimeError: with the tail of the child's stderr when it fails.
    """
    import sam_mi

    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(sam_mi.__file__)))  # this checkout's package first
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    with tempfile.TemporaryDirectory(prefix="sam_mi_memory_") as tmp:
        out = os.path.join(tmp, "result.json")
        request = json.dumps({"kwargs": kwargs, "out": out})
        proc = subprocess.run([sys.executable, "-m", "sam_mi.engine.memory_benchmark", request], env=env,
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not os.path.isfile(out):
            raise RuntimeError(f"memory benchmark of {kwargs} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        with open(out) as f:
            return json.load(f)


def _child(request: str) -> None:
    import sam_mi  # noqa: F401  (registers the model and the datasets)

    spec = json.loads(request)
    kwargs = spec["kwargs"]
    kwargs["image_size"] = tuple(kwargs.get("image_size", (512, 683)))
    with open(spec["out"], "w") as f:  # a private temporary folder: the parent reads it after the exit
        json.dump(measure_memory(**kwargs), f)


if __name__ == "__main__":
    _child(sys.argv[1])
