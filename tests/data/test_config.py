"""CleaningConfig: nested dict round trip, defaults, validation naming the dotted key."""

import pytest

from llama2_pipeline.data import CleaningConfig


def test_defaults_round_trip():
    plain = CleaningConfig().to_dict()
    cfg = CleaningConfig.from_dict(plain)
    assert cfg == CleaningConfig()
    assert cfg.to_dict() == plain and isinstance(plain["quality"], dict)


def test_partial_dict_and_int_for_float():
    cfg = CleaningConfig.from_dict({"quality": {"min_words": 3, "max_symbol_word_ratio": 1},
                                    "dedup": {"threshold": 1}})
    assert cfg.quality.min_words == 3 and cfg.quality.max_symbol_word_ratio == 1.0
    assert cfg.dedup.threshold == 1.0 and cfg.dedup.num_perm == 128


def test_null_disables_a_rule():
    assert CleaningConfig.from_dict({"quality": {"min_words": None}}).quality.min_words is None


@pytest.mark.parametrize("params, key", [
    ({"bogus": 1}, "bogus"),
    ({"quality": {"min_wrds": 1}}, "quality.min_wrds"),
    ({"quality": {"min_words": "50"}}, "quality.min_words"),
    ({"dedup": {"exact": 1}}, "dedup.exact"),
    ({"dedup": {"num_perm": 1.5}}, "dedup.num_perm"),
    ({"dedup": {"bands": 7}}, "dedup.bands"),
    ({"dedup": {"threshold": 1.5}}, "dedup.threshold"),
    ({"pii": {"kinds": ["email", "passport"]}}, "pii.kinds"),
    ({"pii": "yes"}, "pii"),
    ({"compression": "lzma"}, "compression"),
    ({"dedup": {"max_bucket": 0}}, "dedup.max_bucket"),
    ({"engine": "spark"}, "engine"),
    ({"ray": {"partition_mb": 0}}, "ray.partition_mb"),
    ({"ray": {"unit_rows": 0}}, "ray.unit_rows"),
    ({"ray": {"num_cpus": 2}}, "ray.num_cpus"),
])
def test_bad_params_name_the_key(params, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        CleaningConfig.from_dict(params)
