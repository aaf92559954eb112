"""Finding which layer of a user's module reads which one's nodes (torch.fx): claimed only where
zeroing the dead nodes' consumer inputs provably keeps the module's outputs."""
import copy

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from scalpel_tvm import torch_chain, torch_module
from scalpel_tvm.module_graph import consumers


class Apply(nn.Module):
    """A function as a module, so that the traced graph holds it as a call_function / call_method."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def _batchnorm(channels, conv):
    norm = (nn.BatchNorm2d if conv else nn.BatchNorm1d)(channels)
    norm.running_mean.uniform_(-1, 1)
    norm.bias.data.uniform_(0.1, 1)
    return norm


# name -> (keeps zero at zero, module maker(channels, conv))
ELEMENTWISE = {
    "ReLU": (True, lambda c, conv: nn.ReLU()),
    "gelu": (True, lambda c, conv: Apply(nn.functional.gelu)),
    "tanh": (True, lambda c, conv: Apply(torch.tanh)),
    "x.relu()": (True, lambda c, conv: Apply(lambda x: x.relu())),
    "Dropout": (True, lambda c, conv: nn.Dropout(0.3)),
    "Hardswish": (True, lambda c, conv: nn.Hardswish()),
    "Sigmoid": (False, lambda c, conv: nn.Sigmoid()),
    "BatchNorm": (False, _batchnorm),
    "x + 1": (False, lambda c, conv: Apply(lambda x: x + 1)),
}
POOLS = {"MaxPool2d": lambda: nn.MaxPool2d(2), "avg_pool2d": lambda: Apply(lambda x: nn.functional.avg_pool2d(x, 2))}
# conv channels -> a Linear's features (the mean: one per channel; the others: the whole map)
JUNCTIONS = {
    "Flatten": lambda: nn.Flatten(),
    "view": lambda: Apply(lambda x: x.view(x.shape[0], -1)),
    "torch.flatten": lambda: Apply(lambda x: torch.flatten(x, 1)),
    "mean": lambda: Apply(lambda x: x.mean((2, 3))),
}


class Chain(nn.Module):
    def __init__(self, conv, ops, pool, junction):
        super().__init__()
        channels = 6
        self.first = nn.Conv2d(2, channels, 3, padding=1) if conv else nn.Linear(5, channels)
        steps = [ELEMENTWISE[op][1](channels, conv) for op in ops]
        features = channels
        if conv:
            steps += [POOLS[pool](), JUNCTIONS[junction]()] if pool else [JUNCTIONS[junction]()]
            features = channels * (1 if junction == "mean" else 16 if pool else 64)  # an 8x8 input
        self.between = nn.Sequential(*steps)
        self.last = nn.Linear(features, 3)

    def forward(self, x):
        return self.last(self.between(self.first(x)))


@settings(max_examples=40, deadline=None)
@given(conv=st.booleans(), ops=st.lists(st.sampled_from(sorted(ELEMENTWISE)), max_size=3),
       pool=st.sampled_from([None, *POOLS]), junction=st.sampled_from(sorted(JUNCTIONS)), seed=st.integers(0, 2**16))
def test_a_consumer_is_claimed_exactly_when_its_dead_inputs_can_be_zeroed(conv, ops, pool, junction, seed):
    """Through zero-keeping ops, pooling and the flatten to features the consumer is found, and
    zeroing the inputs the dead nodes fed (as pruning does) leaves the outputs as they were;
    through an op that turns zero into something else it is never claimed."""
    torch.manual_seed(seed)
    model = Chain(conv, ops, pool, junction).eval()
    x = torch.rand(3, 2, 8, 8) if conv else torch.rand(3, 5)
    net, _, _ = torch_module.module_net(model, x)
    keeps_zero = all(ELEMENTWISE[op][0] for op in ops)
    assert net.consumer("first") == ("last" if keeps_zero else None)
    if not keeps_zero:
        assert "first" in net.consumers_unknown
    alive = np.ones(6, bool)
    alive[np.random.default_rng(seed).choice(6, 3, replace=False)] = False
    reference = copy.deepcopy(model)
    with torch.no_grad():
        reference.first.weight[torch.from_numpy(~alive)] = 0
        reference.first.bias[torch.from_numpy(~alive)] = 0
        expected = reference(x)
    net.removed = {"first": alive}
    torch_chain.hold_removed_nodes(net)
    with torch.no_grad():
        np.testing.assert_allclose(net(x).numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
    columns = net.weight("last").detach().numpy().reshape(3, 6, -1)
    assert (not columns[:, ~alive].any()) == keeps_zero  # zeroed exactly when claimed
    assert columns[:, alive].all()


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.c(h + self.b(h))


class Branching(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.c = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent: torch.fx cannot trace it
            x = -x
        return self.c(self.a(x))


class TokenMean(nn.Module):
    """Linear on [batch, tokens, features]: a mean over the tokens keeps the features, one over
    the features does not."""

    def __init__(self, over):
        super().__init__()
        self.over = over
        self.a, self.c = nn.Linear(4, 4), nn.Linear(4 if over == 1 else 3, 2)

    def forward(self, x):
        return self.c(torch.relu(self.a(x)).mean(self.over))


def test_every_layer_without_a_consumer_says_why():
    _, why = consumers(Residual(), torch.rand(2, 4), ["a", "b", "c"])
    assert why == {"a": "its output is read by 2 operations (b, add)",
                   "b": "add (add) is not known to keep a dead node at zero on its axis",
                   "c": "its output is the module's output"}
    found, why = consumers(Branching(), torch.rand(2, 4), ["a", "c"])
    assert not found and why["a"].startswith("torch.fx cannot trace the module (TraceError")
    assert consumers(TokenMean(1), torch.rand(2, 3, 4), ["a", "c"])[0] == {"a": "c"}
    assert consumers(TokenMean(-1), torch.rand(2, 3, 4), ["a", "c"])[1]["a"] == \
        "mean (mean) reduces over the node axis"
    _, why = consumers(Chain(True, [], None, "view"), torch.rand(1, 2, 8, 8), ["first"])
    assert why == {"first": "its consumer last is not pruned (see skipped)"}
