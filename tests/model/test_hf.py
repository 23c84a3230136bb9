import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from llama2_pipeline.model import export_hf, generate, load_hf

from .conftest import make_model

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
LlamaForCausalLM, LlamaConfig = transformers.LlamaForCausalLM, transformers.LlamaConfig


@pytest.fixture(scope="module")
def exported(tmp_path_factory, model):
    tok = tmp_path_factory.mktemp("tok") / "sp.model"
    tok.write_bytes(b"fake sentencepiece model")
    return export_hf(model, tmp_path_factory.mktemp("hf") / "model", tokenizer_model_path=tok)


def test_export_folder_layout(exported, model):
    assert sorted(p.name for p in exported.iterdir()) == ["config.json", "model.safetensors", "tokenizer.model"]
    cfg = json.loads((exported / "config.json").read_text())
    c = model.config
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["model_type"] == "llama"
    assert cfg["torch_dtype"] == "float32" and cfg["tie_word_embeddings"] is False
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) == (c.bos_id, c.eos_id, c.pad_id)
    assert cfg["rope_theta"] == cfg["rope_parameters"]["rope_theta"] == 10000.0
    assert (cfg["num_key_value_heads"], cfg["intermediate_size"], cfg["rms_norm_eps"]) == (2, 192, 1e-5)
    assert (exported / "tokenizer.model").read_bytes() == b"fake sentencepiece model"
    assert "model.layers.1.self_attn.k_proj.weight" in load_file(exported / "model.safetensors")


def test_transformers_logits_match(exported, model):
    hf = LlamaForCausalLM.from_pretrained(exported).eval()
    assert hf.config.num_key_value_heads == 2 and hf.dtype == torch.float32
    idx = torch.randint(0, 512, (2, 256))  # the whole context: RoPE at every position
    with torch.no_grad():
        diff = (hf(idx).logits - model(idx)).abs().max().item()
    assert diff <= 1e-4


def test_greedy_matches_transformers_generate(exported):
    # float64 on both sides, so that no near-tie between two tokens can flip the argmax
    hf = LlamaForCausalLM.from_pretrained(exported, dtype=torch.float64).eval()
    hf.generation_config.eos_token_id = None
    ours = load_hf(exported, dtype=torch.float64)
    prompts = [torch.randint(3, 512, (n,)).tolist() for n in (9, 4, 13)]
    L, n_new = 13, 20
    ids = torch.tensor([[0] * (L - len(p)) + p for p in prompts])
    mask = (ids != 0) | (torch.arange(L) >= L - torch.tensor([len(p) for p in prompts])[:, None])
    with torch.no_grad():
        want = hf.generate(input_ids=ids, attention_mask=mask.long(), max_new_tokens=n_new, do_sample=False,
                           pad_token_id=0)[:, L:].tolist()
    assert generate(ours, prompts, n_new, temperature=0, eos_id=[]).tokens == want
    # with an EOS: transformers pads finished rows, we return each row up to its EOS
    eos = want[1][5]
    with torch.no_grad():
        hf_eos = hf.generate(input_ids=ids, attention_mask=mask.long(), max_new_tokens=n_new, do_sample=False,
                             pad_token_id=0, eos_token_id=eos)[:, L:].tolist()
    out = generate(ours, prompts, n_new, temperature=0, eos_id=eos)
    for row, hf_row in zip(out.tokens, hf_eos):
        assert row == hf_row[: len(row)] and (eos not in hf_row or row[-1] == eos)


def test_import_back_gives_identical_weights(exported, model):
    back = load_hf(exported)
    for name, t in model.state_dict().items():
        assert torch.equal(back.state_dict()[name], t), name
    keys = ("dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "vocab_size", "max_seq_len", "norm_eps",
            "rope_theta", "bos_id", "eos_id", "pad_id")
    assert all(getattr(back.config, k) == getattr(model.config, k) for k in keys)
    with torch.no_grad():
        idx = torch.randint(0, 512, (1, 10))
        assert torch.equal(back(idx), model(idx))


@pytest.mark.parametrize("tied", [False, True])
def test_load_transformers_save_pretrained_folder(tmp_path, tied):
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=1, vocab_size=300, max_position_embeddings=64, rms_norm_eps=1e-6,
                      rope_parameters={"rope_type": "default", "rope_theta": 500.0}, tie_word_embeddings=tied)
    hf = LlamaForCausalLM(cfg).eval()
    hf.save_pretrained(tmp_path, max_shard_size="100KB")  # several shards + index
    assert (tmp_path / "model.safetensors.index.json").exists()
    ours = load_hf(tmp_path)
    assert (ours.config.n_kv_heads, ours.config.rope_theta, ours.config.norm_eps) == (1, 500.0, 1e-6)
    idx = torch.randint(0, 300, (2, 40))
    with torch.no_grad():
        assert (ours(idx) - hf(idx).logits).abs().max().item() <= 1e-4


def test_bf16_export_round_trip(tmp_path):
    model = make_model(torch.bfloat16)
    path = export_hf(model, tmp_path / "bf16")
    assert json.loads((path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    back = load_hf(path)
    assert back.output.weight.dtype == torch.bfloat16
    assert torch.equal(back.output.weight, model.output.weight)
    assert load_hf(path, dtype=torch.float32).output.weight.dtype == torch.float32


def test_export_is_atomic_and_replaces(tmp_path, model):
    out = tmp_path / "m"
    with pytest.raises(FileNotFoundError):
        export_hf(model, out, tokenizer_model_path=tmp_path / "missing.model")
    assert list(tmp_path.iterdir()) == []  # nothing half-written
    export_hf(model, out)
    export_hf(model, out)  # replaces the folder as a whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_load_errors_name_the_problem(tmp_path, exported):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf(tmp_path)
    cfg = json.loads((exported / "config.json").read_text())
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({**cfg, "model_type": "mistral"}))
    with pytest.raises(ValueError, match="mistral"):
        load_hf(bad)
    (bad / "config.json").write_text(json.dumps({**cfg, "rope_scaling": {"rope_type": "linear", "factor": 2.0}}))
    with pytest.raises(ValueError, match="linear"):
        load_hf(bad)
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_hf(bad)
    tensors = load_file(exported / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, bad / "model.safetensors")
    with pytest.raises(KeyError, match="model.layers.1.mlp.up_proj.weight"):
        load_hf(bad)


def test_default_device_follows_cuda_availability(monkeypatch):
    from llama2_pipeline.model import default_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_device() == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_device() == "cuda"  # sampling, scoring, PPO and evaluation follow the GPU
