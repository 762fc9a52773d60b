"""Vocabulary validation in one place (sam_mi.data.vocabulary.resolve_vocabulary)."""
import json

import pytest
from detectron2.data import MetadataCatalog

import sam_mi  # noqa: F401  (registers the datasets)
from sam_mi.data.vocabulary import VocabularyError, dataset_vocabulary, resolve_vocabulary, validate_vocabulary

SYN = "synthetic_stuff_val_sem_seg"
VOCB = "voc_2012_test_background_sem_seg"


def _json(tmp_path, value, name="vocab.json"):
    path = tmp_path / name
    path.write_text(json.dumps(value))
    return str(path)


def test_registered_vocabularies_resolve():
    classes = list(MetadataCatalog.get(SYN).stuff_classes)
    assert resolve_vocabulary(SYN) == classes == dataset_vocabulary(SYN)
    assert len(resolve_vocabulary(VOCB)) == 59  # CAT-Seg's voc20b prompts, not the 21 scored classes
    assert len(resolve_vocabulary("ade20k_150_test_sem_seg")) == 150


def test_json_file_replaces_the_dataset_names(tmp_path):
    names = [f"class {i}" for i in range(len(resolve_vocabulary(SYN)))][::-1]
    assert resolve_vocabulary(SYN, _json(tmp_path, names)) == names
    assert resolve_vocabulary(None, _json(tmp_path, ["a", "b"])) == ["a", "b"]  # no dataset: structure only


@pytest.mark.parametrize("value, message", [
    ("sky", r"vocab\.json.*single string"),
    ({"0": "sky"}, r"vocab\.json.*holds a dict"),
    ([], r"vocab\.json.*empty"),
    (["sky", "", "sea"], r"vocab\.json.*#1 = ''"),
    (["sky", 3], r"vocab\.json.*#1 = 3"),
    (["sky", "sea", "sky", "sea ", "sand"], r"vocab\.json.*duplicated: 'sky' \(2x\), 'sea' \(2x\)"),
])
def test_bad_json_structure_is_named(tmp_path, value, message):
    with pytest.raises(VocabularyError, match=message):
        resolve_vocabulary(SYN, _json(tmp_path, value))


def test_wrong_length_gives_both_numbers(tmp_path):
    n = len(resolve_vocabulary(SYN))
    short = [f"c{i}" for i in range(n - 2)]
    with pytest.raises(VocabularyError, match=rf"vocab\.json.*has {n - 2} class names.*{SYN}.*has {n} label ids"):
        resolve_vocabulary(SYN, _json(tmp_path, short))
    # VOC-20b: at least the 20 classes plus one background name, any number above
    assert len(resolve_vocabulary(VOCB, _json(tmp_path, [f"c{i}" for i in range(21)]))) == 21
    with pytest.raises(VocabularyError, match=rf"has 20 class names.*{VOCB}.*at least 21"):
        resolve_vocabulary(VOCB, _json(tmp_path, [f"c{i}" for i in range(20)]))


def test_unreadable_and_missing_files(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('["sky", "sea",')
    with pytest.raises(VocabularyError, match=r"broken\.json.*not valid JSON"):
        resolve_vocabulary(SYN, str(broken))
    with pytest.raises(VocabularyError, match=r"nope\.json.*does not exist"):
        resolve_vocabulary(SYN, str(tmp_path / "nope.json"))
    with pytest.raises(VocabularyError, match="no dataset"):
        resolve_vocabulary(None)
    with pytest.raises(VocabularyError, match="not_a_dataset.*registered"):
        resolve_vocabulary("not_a_dataset")


def test_duplicated_metadata_is_caught_too():
    with pytest.raises(VocabularyError, match=r"metadata.*duplicated: 'a' \(2x\)"):
        validate_vocabulary(["a", "b", "a"], "metadata 'stuff_classes' of dataset 'x'")
