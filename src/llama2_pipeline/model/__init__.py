"""The Llama 2 model family: config and presets, the decoder, KV-cache generation, HF interop.

Nothing here imports Kedro, MLflow or transformers: the model can be imported, tested and
launched (``torchrun``/``deepspeed``) on its own.

    config = ModelConfig.from_preset("tiny", vocab_size=tokenizer_vocab_size)
    model = Llama(config)                        # ids (B, T) -> logits (B, T, vocab)
    out = generate(model, [[1, 15, 27], [1, 9]], max_new_tokens=64, temperature=0.7, top_p=0.9,
                   generator=torch.Generator().manual_seed(0))   # out.tokens, out.logprobs
    export_hf(model, "hf_model", tokenizer_model_path="tokenizer.model")
    model = load_hf("hf_model")                  # also reads save_pretrained folders
"""

from llama2_pipeline.core.lazy import lazy_exports

from .config import (  # no torch: params validation and planning use the config alone
         PRESETS,
         ModelConfig,
         ModelSpec,
)

# the rest (torch) on first use
_LAZY = {"GenerationOutput": "generation", "generate": "generation", "default_device": "hf", "export_hf": "hf",
         "RewardModel": "reward", "export_reward_hf": "reward",
         "load_hf": "hf", "release_device_memory": "hf",
         "KVCache": "model", "Llama": "model"}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())

__all__ = [
    "PRESETS",
    "GenerationOutput",
    "KVCache",
    "Llama",
    "ModelConfig",
    "ModelSpec",
    "default_device",
    "release_device_memory",
    "export_hf",
    "generate",
    "load_hf",
]
