"""Configuration keys of SAM-MI.

Every key this project adds lives under ``MODEL.SAM_MI`` except the few solver keys the optimizer and
schedule need (``SOLVER.*``).  Keys that can be derived from the built model (CLIP embedding width,
guidance channels, mask resolution) are derived in ``SAMMI.from_config`` rather than configured, so they
can never disagree with the weights.
"""
from detectron2.config import CfgNode as CN

# OpenAI CLIP normalisation, expressed in 0-255 RGB (CAT-Seg's CLIP_PIXEL_MEAN/STD).
CLIP_PIXEL_MEAN = [122.7709383, 116.7460125, 104.09373615]
CLIP_PIXEL_STD = [68.5005327, 66.6321579, 70.3231630]


def add_sam_mi_config(cfg: CN) -> None:
    """Add SAM-MI's keys (with the paper's defaults) to a detectron2 config, in place."""
    # ---------------------------------------------------------------- solver
    cfg.SOLVER.OPTIMIZER = "ADAMW"  # "ADAMW" or "SGD"
    # lr multiplier for CLIP's trainable (Q/V) parameters: 2e-4 * 0.01 = 2e-6 as in CAT-Seg / the paper.
    cfg.SOLVER.CLIP_MULTIPLIER = 0.01
    # lr multiplier for TSPP; stage 2 trains TSPP "with a reduced learning rate" (Sec. 3.5).
    cfg.SOLVER.TSPP_MULTIPLIER = 1.0
    # weight decay of nn.Embedding / learned padding tokens (Mask2Former / CAT-Seg habit).
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    # power of fvcore's PolynomialDecayParamScheduler when LR_SCHEDULER_NAME == "WarmupPolyLR".
    cfg.SOLVER.POLY_LR_POWER = 0.9
    # iterations between two writes of the metrics (console, metrics.json); detectron2's default is 20.
    cfg.SOLVER.LOG_PERIOD = 20

    s = cfg.MODEL.SAM_MI = CN()
    # 1: train TSPP alone with L_tspp, everything else frozen; 2: train the whole model with
    # L_ce + lambda_tspp * L_tspp (Sec. 3.5).  Ignored at test time.
    s.TRAIN_STAGE = 2
    # Optional JSON list of class names that replaces the dataset's vocabulary (for custom prompts).
    s.VOCABULARY_JSON = ""

    # ---------------------------------------------------------------- CLIP (Sec. 3.1)
    s.CLIP = CN()
    # open_clip model name: "ViT-B-16", "ViT-L-14-336", or "sam-mi-tiny" (random tiny CLIP for tests).
    s.CLIP.MODEL_NAME = "ViT-B-16"
    # "openai" (open_clip's pretrained tag, needs the weights in open_clip's cache), a local checkpoint
    # file, or "" for random initialisation (tiny configurations, tests).
    s.CLIP.PRETRAINED = "openai"
    # input resolution of CLIP's image encoder: 384 for ViT-B/16 (pos. embedding resized), 336 for L/14.
    s.CLIP.RESOLUTION = [384, 384]
    # blocks whose outputs guide the upsampling decoder (CAT-Seg: 3/7 for ViT-B, 7/15 for ViT-L).
    s.CLIP.GUIDANCE_LAYERS = [3, 7]
    # "attention": only Q and V projections of both encoders train (CAT-Seg v2); "full"; "frozen".
    s.CLIP.FINETUNE = "attention"
    # prompt templates: "single" ("A photo of a {} in the scene"), "imagenet_select" (8), "imagenet" (80).
    s.CLIP.PROMPT_TEMPLATES = "single"
    s.CLIP.PIXEL_MEAN = CLIP_PIXEL_MEAN
    s.CLIP.PIXEL_STD = CLIP_PIXEL_STD
    # classes are sent through the text encoder in chunks of this size (847-class vocabularies).
    s.CLIP.TEXT_BATCH_SIZE = 256

    # ---------------------------------------------------------------- cost aggregation (CAT-Seg)
    s.AGGREGATOR = CN()
    s.AGGREGATOR.HIDDEN_DIM = 128
    s.AGGREGATOR.TEXT_GUIDANCE_PROJ_DIM = 128
    s.AGGREGATOR.APPEARANCE_GUIDANCE_PROJ_DIM = 128
    s.AGGREGATOR.DECODER_DIMS = [64, 32]
    # channels of the two upsampled CLIP guidance maps (upsample1 / upsample2 outputs).
    s.AGGREGATOR.DECODER_GUIDANCE_DIMS = [256, 128]
    s.AGGREGATOR.DECODER_GUIDANCE_PROJ_DIMS = [32, 16]
    s.AGGREGATOR.NUM_LAYERS = 2
    s.AGGREGATOR.NUM_HEADS = 4
    # class-aggregation average pooling: [2, 2] for training, [1, 1] in the evaluation protocol.
    s.AGGREGATOR.POOLING_SIZES = [2, 2]
    s.AGGREGATOR.WINDOW_SIZE = 12
    s.AGGREGATOR.ATTENTION_TYPE = "linear"  # "linear" or "full"
    # class aggregation pads to / selects the top-k of this many classes.
    s.AGGREGATOR.PAD_LEN = 256
    # classes per chunk in the per-class parts of the aggregator (Swin blocks, decoder) and as many tokens per
    # chunk in its class attention; 0 = all at once. Same result; a cache-sized working set (sam_mi/modeling/
    # aggregator.py, tools/benchmark_aggregator.py).
    s.AGGREGATOR.CLASS_CHUNK = 16

    # ---------------------------------------------------------------- TSPP (Sec. 3.2)
    s.TSPP = CN()
    s.TSPP.ENABLED = True
    # the prompter stage (PROMPTER_REGISTRY, sam_mi/modeling/prompter.py) and its TSPP network
    # (TSPP_HEAD_REGISTRY); ENABLED False keeps the prompter for grid/random prompts but drops the network.
    s.TSPP.NAME = "TSPPPrompter"
    # "PaperTSPPHead" (Fig. 3c: MLP + attention block + two linear projection heads) or "TSPPHead" (our
    # earlier head with a convolutional probability branch; checkpoints trained with it need this value)
    s.TSPP.HEAD_NAME = "PaperTSPPHead"
    # "learned" (TSPP probabilities), "grid" (all GRID_SIZE^2 points, Table 5 "uniform grid"),
    # "random" (RANDOM_POINTS points drawn uniformly from the grid, Table 5 "random sampling").
    s.TSPP.SAMPLING = "learned"
    s.TSPP.GRID_SIZE = 32  # d_h = d_w
    s.TSPP.G_P = 5  # Eq. 5: one expected point per g_p grid points of a mask ...
    s.TSPP.M_P = 10  # ... and at most m_p expected points per mask
    s.TSPP.RANDOM_POINTS = 64
    s.TSPP.HIDDEN_DIM = 32
    # classes the TSPP head processes at a time (sam_mi/modeling/tspp_context.py): the same result, and its
    # memory stops growing with the vocabulary past the [B, h*w, T, C] S_en; 0 = all classes at once
    s.TSPP.CLASS_CHUNK = 64
    s.TSPP.LAMBDA_MSE = 0.5  # L_tspp = L_ce^mask + lambda_mse * L_mse
    s.TSPP.LOSS_WEIGHT = 0.1  # lambda_tspp in stage 2 (stage 1 uses L_tspp alone)
    # > 0: rescale every probability map to sum to this many expected points. For latency benchmarks with
    # random weights only (an untrained head's point count is arbitrary); 0 uses the learned map as it is.
    s.TSPP.CALIBRATE_POINTS = 0.0

    # ---------------------------------------------------------------- SAM (frozen)
    s.SAM = CN()
    s.SAM.ENABLED = True
    # a key of MASK_GENERATOR_REGISTRY (sam_mi/modeling/sam/): "sam", "hq_sam", "sam2", "mobile_sam", "fast_sam"
    s.SAM.VARIANT = "sam"
    s.SAM.MODEL_TYPE = "vit_h"  # the variant's registry key ("vit_h", "vit_l", "vit_b", "tiny", ...)
    s.SAM.CHECKPOINT = ""  # path to the variant's checkpoint (required unless MODEL_TYPE is "tiny")
    # build the variant's architecture with random weights instead of reading CHECKPOINT (benchmarks); with
    # it official SAM types run at any IMAGE_SIZE divisible by 16.
    s.SAM.RANDOM_INIT = False
    # diagnostic: the ground truth's regions replace SAM's masks (SMAgg and DMI unchanged), the ceiling of
    # mask injection on a dataset. Needs the labels in the inputs (training; whole-image evaluation).
    s.SAM.ORACLE_MASKS = False
    # its control: the oracle's masks mirrored left-right (right shapes and count, wrong places). If a model
    # scores the same with them, the masks' gain is not their placement (sam_mi/engine/demo.py's table)
    s.SAM.ORACLE_MIRRORED = False
    s.SAM.IMAGE_SIZE = 1024  # SAM's input size, independent of CLIP's
    s.SAM.POINTS_PER_BATCH = 64  # points decoded together (memory bound)
    # SAM's automatic-mask-generator filters (defaults tuned for ViT-H).
    s.SAM.PRED_IOU_THRESH = 0.88
    s.SAM.STABILITY_SCORE_THRESH = 0.95
    s.SAM.STABILITY_SCORE_OFFSET = 1.0
    s.SAM.BOX_NMS_THRESH = 0.7
    # masks kept per point (sam_mi/modeling/sam/point_decoder.py): "best" = the paper's "each point generates
    # a single mask" (Sec. 4.3): SAM's 3 candidates, the one with the highest predicted IoU; "single" = SAM's
    # single-output token; "amg" = all 3 candidates, as SAM's automatic mask generator.
    s.SAM.MASKS_PER_POINT = "best"
    # fast paths (same outputs to float rounding, checked against segment-anything when built):
    # encoder attention through fused scaled_dot_product_attention (sam/fast_attention.py) ...
    s.SAM.SDPA = True
    # ... and the mask decoder's per-image work shared across points (sam/fast_decoder.py).
    s.SAM.FAST_DECODER = True
    # autocast of the frozen image encoder (bf16 on CPU and on CUDA where supported, else fp16); off by
    # default: embeddings differ by ~1e-2 of their range from fp32 (tests/test_sam_fast_path.py).
    s.SAM.AMP = False
    # folder of the SAM image-embedding cache for repeated evaluations ("" = off; never used in training),
    # sam/embedding_cache.py.
    s.SAM.EMBEDDING_CACHE = ""

    # ---------------------------------------------------------------- cost head (Sec. 3.4 + CAT-Seg)
    s.COST_HEAD = CN()
    s.COST_HEAD.NAME = "MaskInjectedCostHead"  # COST_HEAD_REGISTRY, sam_mi/modeling/cost_head.py

    # ---------------------------------------------------------------- SMAgg (Sec. 3.3)
    s.SMAGG = CN()
    s.SMAGG.ENABLED = True
    s.SMAGG.ALPHA_SMA = 0.5

    # ---------------------------------------------------------------- DMI (Sec. 3.4)
    s.DMI = CN()
    s.DMI.LOW_ENABLED = True  # Eq. 8-10
    s.DMI.HIGH_ENABLED = True  # Eq. 11-12
    s.DMI.NUM_HEADS = 8  # heads of the inter-mask cross-attention (Eq. 10)
    s.DMI.HIGH_HIDDEN_DIM = 64  # width of proj / MLP in the high-frequency injection

    # ---------------------------------------------------------------- data (training mapper)
    s.INPUT = CN()
    s.INPUT.COLOR_AUG_SSD = True
    # RandomCrop_CategoryAreaConstraint: max fraction of the crop one category may cover.
    s.INPUT.SINGLE_CATEGORY_MAX_AREA = 1.0
    # pad training images (value 128) and labels (ignore) to a multiple of this; -1 disables.
    s.INPUT.SIZE_DIVISIBILITY = 384

    # ---------------------------------------------------------------- inference
    s.INFERENCE = CN()
    # The OVSS protocol (CAT-Seg eval.sh): sliding window on a 640x640 resize, 4 crops + 1 global view.
    s.INFERENCE.SLIDING_WINDOW = False
    # whole-image inference pads the image to a multiple of this before resizing it for CLIP, as CAT-Seg does
    # with MODEL.MASK_FORMER.SIZE_DIVISIBILITY (cvlab-kaist/CAT-Seg cat_seg/cat_seg_model.py)
    s.INFERENCE.SIZE_DIVISIBILITY = 32
    s.INFERENCE.WINDOW_SIZE = 384
    s.INFERENCE.WINDOW_OVERLAP = 0.333
    s.INFERENCE.OUT_RESOLUTION = 640
    # False (the paper, Sec. 4.1): SAM's image encoder runs once per image at its own size and every view's
    # points are decoded on that embedding; True: SAM runs on each view like CLIP (for comparison)
    s.INFERENCE.SAM_PER_VIEW = False
    # which output is scored at test time: "cost_head" (the model's prediction) or "tspp" (TSPP's own mask
    # output M^text; Table 8 evaluates it after stage 1)
    s.INFERENCE.SCORES = "cost_head"
    # autocast at test time: float16 on CUDA, bfloat16 on CPU (scores are merged in float32).
    s.INFERENCE.AMP = False
