import pytest
import torch

from llama2_pipeline.model import PRESETS, Llama, ModelConfig

RELEASED = {"7b": 6_738_415_616, "13b": 13_015_864_320, "70b": 68_976_648_192}


def meta_params(name: str) -> int:
    with torch.device("meta"):  # shapes only: nothing is allocated
        model = Llama(ModelConfig.from_preset(name))
    assert model.output.weight.is_meta
    return model.num_params()


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_paper_presets_match_released_checkpoints(name):
    assert meta_params(name) == RELEASED[name]
    assert ModelConfig.from_preset(name).num_params() == RELEASED[name]


def test_1b_preset_is_tinyllama_shape():
    c = ModelConfig.from_preset("1b")
    assert (c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.ffn_dim, c.vocab_size, c.max_seq_len) == (
        2048, 22, 32, 4, 5632, 32000, 2048)
    assert meta_params("1b") == c.num_params() == 1_100_048_384


@pytest.mark.parametrize("name,ffn", [("7b", 11008), ("13b", 13824), ("34b", 22016), ("70b", 28672)])
def test_meta_ffn_rule(name, ffn):
    c = ModelConfig.from_preset(name)
    assert c.ffn_dim == ffn and c.vocab_size == 32000 and c.max_seq_len == 4096
    assert c.n_kv_heads == (8 if name in ("34b", "70b") else c.n_heads)


def test_small_presets():
    smoke, tiny = ModelConfig.from_preset("smoke"), ModelConfig.from_preset("tiny")
    assert smoke.n_kv_heads < smoke.n_heads and smoke.vocab_size == 512 and smoke.max_seq_len == 256
    assert tiny.n_kv_heads < tiny.n_heads and tiny.max_seq_len == 512
    assert 1e6 <= tiny.num_params() <= 5.1e6
    assert 100e6 < ModelConfig.from_preset("160m").num_params() < 200e6
    small_vocab = ModelConfig.from_preset("tiny", vocab_size=2048)
    assert small_vocab.vocab_size == 2048 and small_vocab.num_params() < tiny.num_params()


def test_num_params_exclude_embedding_matches_model():
    c = ModelConfig.from_preset("smoke")
    model = Llama(c)
    assert c.num_params() == model.num_params()
    assert c.num_params(exclude_embedding=True) == model.num_params(exclude_embedding=True)
    assert c.num_params() - c.num_params(exclude_embedding=True) == c.vocab_size * c.dim


def test_dict_round_trip():
    c = ModelConfig.from_preset("70b", vocab_size=1000, max_seq_len=128)
    d = c.to_dict()
    assert d["ffn_dim"] == c.ffn_dim and d["vocab_size"] == 1000
    assert ModelConfig.from_dict(d) == c


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ValueError) as e:
        ModelConfig.from_preset("3b")
    for name in PRESETS:
        assert name in str(e.value)


def test_kv_heads_must_divide_heads():
    with pytest.raises(ValueError, match=r"n_kv_heads \(3\).*n_heads \(4\)"):
        ModelConfig.from_preset("smoke", n_kv_heads=3)


@pytest.mark.parametrize("overrides,match", [
    ({"dim": 66}, "divisible by n_heads"),
    ({"dim": 24, "n_heads": 8, "n_kv_heads": 8}, "even"),
    ({"n_layers": 0}, "n_layers"),
    ({"vocab_size": 2}, "eos_id"),
    ({"norm_eps": 0.0}, "norm_eps"),
    ({"ffn_dim": -5}, "ffn_dim"),
])
def test_bad_configs_raise_clear_errors(overrides, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig.from_preset("smoke", **overrides)


def test_unknown_field_is_rejected():
    with pytest.raises(ValueError, match="unknown ModelConfig field.*d_model"):
        ModelConfig.from_dict({**ModelConfig.from_preset("smoke").to_dict(), "d_model": 3})
