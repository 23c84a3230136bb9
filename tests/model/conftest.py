import pytest
import torch

from llama2_pipeline.model import Llama, ModelConfig


def make_model(dtype=torch.float32, seed=0, **overrides) -> Llama:
    """A random smoke-preset model (eval mode); float64 where exact token equality is compared."""
    torch.manual_seed(seed)
    return Llama(ModelConfig.from_preset("smoke", **overrides)).to(dtype).eval()


@pytest.fixture(autouse=True)
def one_thread():
    """Small shapes run fastest on one thread, and a busy shared CPU cannot stall it."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def model() -> Llama:
    return make_model()


@pytest.fixture(scope="module")
def model64() -> Llama:
    return make_model(torch.float64)
