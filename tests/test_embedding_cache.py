"""The SAM image-embedding cache (sam_mi/modeling/sam/embedding_cache.py) and its use by `PointPromptedSAM.encode`."""

import os
import threading

import pytest
import torch

from sam_mi.modeling.sam import PointPromptedSAM, build_tiny_sam
from sam_mi.modeling.sam.embedding_cache import SAMEmbeddingCache, state_dict_fingerprint


def _generator(cache, seed=0, **kw):
    torch.manual_seed(seed)
    gen = PointPromptedSAM(build_tiny_sam(128), 128, embedding_cache=cache, **kw)
    calls = []
    gen.sam.image_encoder.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    return gen, calls


@pytest.fixture
def images():
    return torch.rand(2, 3, 100, 150, generator=torch.Generator().manual_seed(0)) * 255


def test_second_encode_hits_and_skips_the_encoder(tmp_path, images):
    cache = SAMEmbeddingCache(str(tmp_path / "cache"))
    gen, calls = _generator(cache)
    first = gen.encode(images, use_cache=True)
    assert calls == [2] and cache.misses == 2 and cache.hits == 0
    second = gen.encode(images, use_cache=True)
    assert calls == [2] and cache.hits == 2  # no encoder call
    assert torch.equal(first, second) and second.dtype == torch.float32
    # a batch with one new image encodes only that one, and keeps the batch order
    other = torch.rand(1, 3, 100, 150, generator=torch.Generator().manual_seed(9)) * 255
    mixed = gen.encode(torch.cat([images[1:], other]), use_cache=True)
    assert calls == [2, 1]
    assert torch.equal(mixed[0], first[1]) and torch.allclose(mixed[1], gen.encode(other)[0], atol=1e-5)
    # without use_cache (training) the cache is neither read nor written
    n_files = sum(len(f) for _, _, f in os.walk(cache.folder))
    gen.encode(torch.rand(1, 3, 100, 150) * 255)
    assert sum(len(f) for _, _, f in os.walk(cache.folder)) == n_files and cache.hits == 3


def test_other_weights_or_preprocessing_never_hit(tmp_path, images):
    cache = SAMEmbeddingCache(str(tmp_path))
    gen, _ = _generator(cache, seed=0)
    gen.encode(images, use_cache=True)
    other_weights, calls = _generator(cache, seed=1)
    assert other_weights.weights_fingerprint() != gen.weights_fingerprint()
    other_weights.encode(images, use_cache=True)
    assert calls == [2]
    amp, calls = _generator(cache, seed=0, amp=True)  # same weights, other numerics
    amp.encode(images, use_cache=True)
    assert calls == [2]
    same, calls = _generator(cache, seed=0)
    same.encode(images, use_cache=True)
    assert calls == []
    # one changed pixel value is another image
    changed = images.clone()
    changed[0, 0, 0, 0] += 1
    same.encode(changed, use_cache=True)
    assert calls == [1]


def test_fingerprint_sees_every_weight():
    torch.manual_seed(0)
    sam = build_tiny_sam(128)
    before = state_dict_fingerprint(sam)
    with torch.no_grad():
        sam.mask_decoder.iou_token.weight[0, 0] += 1e-6
    assert state_dict_fingerprint(sam) != before


def test_corrupt_entry_is_ignored_with_a_warning_and_rewritten(tmp_path, images):
    cache = SAMEmbeddingCache(str(tmp_path))
    gen, calls = _generator(cache)
    ref = gen.encode(images[:1], use_cache=True)
    (path,) = [os.path.join(d, f) for d, _, fs in os.walk(cache.folder) for f in fs]
    with open(path, "wb") as f:
        f.write(b"not a torch file")
    with pytest.warns(UserWarning, match="unreadable entry"):
        again = gen.encode(images[:1], use_cache=True)
    assert calls == [1, 1] and torch.equal(again, ref)
    assert torch.equal(cache.get(SAMEmbeddingCache.key_for(images[0], gen.weights_fingerprint(), gen.cache_tag())), ref[0])
    # an entry stored under another key (a copied file) is not returned
    key = cache.key_for(images[0], "x")
    os.makedirs(os.path.dirname(cache.path(key)), exist_ok=True)
    os.replace(path, cache.path(key))
    with pytest.warns(UserWarning, match="unreadable entry"):
        assert cache.get(key) is None


def test_put_stores_a_copy_of_the_row_only(tmp_path):
    cache = SAMEmbeddingCache(str(tmp_path))
    batch = torch.randn(8, 32, 16, 16)
    cache.put("ab" * 10, batch[3])
    assert os.path.getsize(cache.path("ab" * 10)) < 2 * batch[3].numel() * 4  # not the 8-row storage
    assert torch.equal(cache.get("ab" * 10), batch[3])


def test_concurrent_writers_and_readers_of_one_key(tmp_path):
    """Atomic replace: once an entry exists, readers always get a whole one while two writers race on it."""
    cache = SAMEmbeddingCache(str(tmp_path))
    key = "cd" * 10
    values = [torch.full((64, 32, 32), float(i)) for i in range(2)]
    errors, seen = [], []

    def write(v):
        try:
            for _ in range(15):
                cache.put(key, v)
        except Exception as e:  # reported by the assertion below
            errors.append(e)

    def read():
        for _ in range(30):
            if os.path.exists(cache.path(key)):
                got = cache.get(key)  # None here would mean a torn entry
                seen.append(None if got is None or not bool((got == got.flatten()[0]).all()) else float(got[0, 0, 0]))

    threads = [threading.Thread(target=write, args=(v,)) for v in values] + [threading.Thread(target=read)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and None not in seen
    assert float(cache.get(key)[0, 0, 0]) in (0.0, 1.0)
    assert [f for f in os.listdir(os.path.dirname(cache.path(key))) if f.startswith(".tmp-")] == []


def test_cache_folder_errors_name_the_key(tmp_path):
    with pytest.raises(ValueError, match="MODEL.SAM_MI.SAM.EMBEDDING_CACHE"):
        SAMEmbeddingCache("")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="MODEL.SAM_MI.SAM.EMBEDDING_CACHE"):
        SAMEmbeddingCache(str(blocker / "sub"))


@pytest.mark.parametrize("sliding_window", [False, True])
def test_model_config_switches_the_cache_on_at_test_time(tmp_path, sliding_window):
    """MODEL.SAM_MI.SAM.EMBEDDING_CACHE through build_model: a second evaluation of an image skips SAM's image
    encoder (whole image, and the sliding window's once-per-image encoding) and predicts the same scores."""
    from detectron2.modeling import build_model

    from conftest import tiny_cfg

    cfg = tiny_cfg(opts=["MODEL.SAM_MI.SAM.EMBEDDING_CACHE", str(tmp_path / "cache"),
                         "MODEL.SAM_MI.INFERENCE.SLIDING_WINDOW", sliding_window])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    calls = []
    encoder = model.mask_generator.sam.image_encoder
    encoder.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    x = {"image": torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8, generator=torch.Generator().manual_seed(3)),
         "file_name": "a.png"}
    first = model([x])[0]
    assert calls == [1] and model.mask_generator.embedding_cache.misses == 1
    second = model([x])[0]
    assert calls == [1] and model.mask_generator.embedding_cache.hits == 1
    assert torch.equal(first["sem_seg"], second["sem_seg"]) and first["sam_mi"] == second["sam_mi"]
    model.train()
    model([{"image": x["image"], "sem_seg": torch.zeros(96, 128, dtype=torch.long)}])  # training never reads it
    assert calls == [1, 1] and model.mask_generator.embedding_cache.hits == 1
