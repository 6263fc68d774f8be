"""One cache key helper: the keys every cache had before it are unchanged."""

import hashlib
import json
from pathlib import Path

from cxrlib.base.cache import cache_key, canonical_json

SETTINGS = {"version": 3, "config": {"b": [1, 2.5], "a": None}, "path": Path("/x")}


def test_compact_key_is_the_sha256_of_sorted_compact_json():
    text = json.dumps(SETTINGS, sort_keys=True, separators=(",", ":"), default=str)
    assert canonical_json(SETTINGS) == text
    assert cache_key(SETTINGS) == hashlib.sha256(text.encode()).hexdigest()


def test_spaced_key_is_the_sha256_of_json_dumps_default_spacing():
    data = {"version": 1, "train": ["a", "b"], "config": {"epochs": 2, "lr": 0.001}}
    old = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    assert cache_key(data, compact=False) == old
    fingerprint = ["segmenter", [["abc", ["/img.png", 10, 123]]]]
    old_list = hashlib.sha256(json.dumps(fingerprint, default=str).encode()).hexdigest()
    assert cache_key(fingerprint, compact=False) == old_list


def test_key_is_pinned_and_independent_of_key_order():
    key = cache_key({"b": 1, "a": [1, "x"]})
    assert key == cache_key({"a": [1, "x"], "b": 1})
    assert key == hashlib.sha256(b'{"a":[1,"x"],"b":1}').hexdigest()
    assert len(key) == 64 and key != cache_key({"a": [1, "x"], "b": 2})
