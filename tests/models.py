"""Small torch modules used by the tests, defined at module level so TorchScript can script them."""

import torch
from torch import nn


class ScalarRegressor(nn.Module):
    """Two scalar features -> one scalar: forward(x1 [b,1], x2 [b,1]) -> [b,1]."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, x1, x2):
        return self.linear(torch.cat([x1, x2], dim=1))


class MixedClassifier(nn.Module):
    """A scalar and an array feature -> k class probabilities: [b,1], [b,n] -> [b,k]."""

    def __init__(self, n: int = 4, k: int = 3):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1 + n, 8), nn.Tanh(), nn.Linear(8, k))

    def forward(self, x, v):
        return torch.softmax(self.net(torch.cat([x, v], dim=1)), dim=1)


class ArrayToScalar(nn.Module):
    """One array feature -> a flat [b] output (squeezed)."""

    def __init__(self, n: int = 4):
        super().__init__()
        self.linear = nn.Linear(n, 1)

    def forward(self, v):
        return self.linear(v).squeeze(1)


class EmbeddingModel(nn.Module):
    """An integer id column (an embedding index) and a double column -> scalar."""

    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(10, 3)
        self.linear = nn.Linear(4, 1)

    def forward(self, ids, x):
        return self.linear(torch.cat([self.embedding(ids.squeeze(1)), x], dim=1))


class AddFive(nn.Module):
    """The PyTorch-on-Flink demo's network: adds 5 to every element."""

    def forward(self, x):
        return x + 5.0


class DropoutNet(nn.Module):
    """Two scalar features -> one, through an MLP with dropout: randomness in the forward
    pass that a resumed fit must reproduce."""

    def __init__(self, hidden: int = 16, dropout: float = 0.3):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, 1))

    def forward(self, a, b):
        return self.net(torch.cat([a, b], dim=1))
