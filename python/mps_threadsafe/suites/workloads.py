"""The models of the verification reports this project starts from, with their inputs."""

import copy

import torch
from torch import nn

from .models import ALL_MODELS, BENCH_MODELS, STRESS_MODELS  # noqa: F401  (re-exported)


class Matmul(nn.Module):
    """x @ W with a fixed 512x512 weight (the stress suite's raw matmul)."""

    def __init__(self, n=512):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n, n) / n ** 0.5)

    def forward(self, x):
        return x @ self.weight


def _encoder(layers, d_model, nhead, ff):
    layer = nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward=ff, dropout=0.0,
                                       batch_first=True)
    if layers == 1:
        return layer
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


# name -> (builder, input shape given batch B, default batch, quick overrides)
MODELS = {
    "linear": (lambda q: nn.Linear(256, 128), lambda b, q: (b, 256), 4),
    "mlp": (lambda q: nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256),
                                    nn.ReLU(), nn.Linear(256, 128)),
            lambda b, q: (b, 256), 4),
    "transformer": (lambda q: nn.TransformerEncoderLayer(256, 4, batch_first=True),
                    lambda b, q: (b, 32, 256), 4),
    # story's block: 2 layers, ff 1024, dropout 0
    "story_block": (lambda q: _encoder(2, 256, 4, 1024), lambda b, q: (b, 32, 256), 4),
    "linear_256": (lambda q: nn.Linear(256, 256), lambda b, q: (b, 256), 32),
    "matmul_512": (lambda q: Matmul(512), lambda b, q: (512, 512), 1),
    # the large one: 6 layers d=512 nhead=8 ff=2048 on (4,128,512); --quick: 2 layers, L=32
    "transformer_6x512": (lambda q: _encoder(2 if q else 6, 512, 8, 2048),
                          lambda b, q: (b, 32 if q else 128, 512), 4),
}

assert tuple(MODELS) == ALL_MODELS, "models.py and workloads.py must name the same models"


def build(name, quick=False, seed=0):
    """The CPU master model (eval mode) with deterministic weights."""
    if name not in MODELS:
        raise ValueError(f"unknown model '{name}' ({', '.join(MODELS)})")
    torch.manual_seed(seed)
    return MODELS[name][0](quick).eval()


def input_for(name, batch=None, quick=False, seed=0):
    builder, shape, default_batch = MODELS[name]
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape(batch or default_batch, quick), generator=generator)


def default_batch(name):
    return MODELS[name][2]


def replicate(master, device):
    """A thread's own copy of the model on the device."""
    return copy.deepcopy(master).to(device)
