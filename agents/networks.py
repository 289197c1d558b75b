"""The networks of multi-task SAC: a squashed-Gaussian actor and a twin Q-critic.

Both are plain MLPs (3×400 ReLU layers in the reference Meta-World v3 set-up). The task identity
reaches them only through the observation (Meta-World's one-hot task id after the 39 state values),
so every parameter is shared by all tasks: exactly the parameters a gradient combiner acts on.

The twin critic keeps its two Q-networks as one *ensemble* whose weights carry a leading member
dimension and run as one batched matrix product (``torch.baddbmm``) instead of two module calls.
That halves the kernel launches of every critic evaluation, which is what bounds the speed of a
small-batch update on a GPU.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "LOG_STD_MAX",
    "LOG_STD_MIN",
    "Actor",
    "EnsembleLinear",
    "MemberLinear",
    "TwinCritic",
    "mlp",
    "squashed_gaussian",
]

LOG_STD_MIN = -20.0
LOG_STD_MAX = 2.0
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class MemberLinear(nn.Linear):
    """An ``nn.Linear`` computed as one member of a batched product (``torch.baddbmm``).

    The same parameters and initialisation as ``nn.Linear``; only the kernel differs. It is the one
    a pack of runs uses for all its members at once (:mod:`mtrl_fair.agents.packed_networks`), so a
    run trained in a pack computes exactly the numbers it computes alone.
    """

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(1, -1, x.shape[-1])
        out = torch.baddbmm(self.bias.view(1, 1, -1), rows, self.weight.t().unsqueeze(0))
        return out.reshape(*x.shape[:-1], -1)


def mlp(in_features: int, hidden: Sequence[int], out_features: int) -> nn.Sequential:
    """A ReLU MLP ``in_features → hidden… → out_features`` with PyTorch's default initialisation."""
    layers: list[nn.Module] = []
    width = in_features
    for size in hidden:
        layers += [MemberLinear(width, size), nn.ReLU()]
        width = size
    layers.append(MemberLinear(width, out_features))
    return nn.Sequential(*layers)


class EnsembleLinear(nn.Module):
    """``members`` independent linear layers applied to a ``(members, N, in_features)`` input."""

    def __init__(self, members: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(members, 1, out_features))
        # The same initialisation as nn.Linear, member by member: U(-1/sqrt(in), 1/sqrt(in)).
        bound = 1.0 / math.sqrt(in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        return torch.baddbmm(self.bias, x, self.weight)

    def task_gradients(
        self, inputs: Tensor, output_grads: Tensor, num_tasks: int, out: Mapping[str, Tensor] | None = None
    ) -> dict[str, Tensor]:
        """Per-task gradients ``(K, members, in, out)`` and ``(K, members, 1, out)`` from the inputs
        ``(members, N, in)`` and output gradients ``(members, N, out)`` of rows ordered task-major
        (see :mod:`mtrl_fair.layer_jacobian`), written into ``out[name]`` when given."""
        members, _, in_features = inputs.shape
        out_features = output_grads.shape[-1]
        # The rows regrouped (task, member)-major: the gradients then come out in the layout of a
        # (K, *param.shape) row, and the inputs are copied rather than the larger result.
        x = inputs.reshape(members, num_tasks, -1, in_features).transpose(0, 1)
        x = x.reshape(num_tasks * members, -1, in_features)
        delta = output_grads.reshape(members, num_tasks, -1, out_features).transpose(0, 1)
        delta = delta.reshape(num_tasks * members, -1, out_features)
        flat_weight = flat_bias = None
        if out is not None:
            flat_weight = out["weight"].view(num_tasks * members, in_features, out_features)
            flat_bias = out["bias"].view(num_tasks * members, out_features)
        weight = torch.bmm(x.transpose(1, 2), delta, out=flat_weight)
        bias = torch.sum(delta, dim=1, out=flat_bias)
        return {
            "weight": weight.view(num_tasks, members, in_features, out_features),
            "bias": bias.view(num_tasks, members, 1, out_features),
        }

    def extra_repr(self) -> str:
        members, in_features, out_features = self.weight.shape
        return f"members={members}, in_features={in_features}, out_features={out_features}"


class TwinCritic(nn.Module):
    """Two Q-networks ``Q(s, a)`` evaluated together; ``forward`` returns ``(2, *batch)`` values."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: Sequence[int], members: int = 2) -> None:
        super().__init__()
        self.members = members
        widths = [obs_dim + action_dim, *hidden, 1]
        self.layers = nn.ModuleList(EnsembleLinear(members, a, b) for a, b in itertools.pairwise(widths))

    def forward(self, obs: Tensor, action: Tensor) -> Tensor:
        x = torch.cat([obs, action], dim=-1)
        batch_shape = x.shape[:-1]
        x = x.reshape(1, -1, x.shape[-1]).expand(self.members, -1, -1)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x.reshape(self.members, *batch_shape)


class Actor(nn.Module):
    """A tanh-squashed diagonal Gaussian policy: ``forward`` returns ``(mean, log_std)``."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.net = mlp(obs_dim, hidden, 2 * action_dim)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_std = self.net(obs).chunk(2, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)


def squashed_gaussian(mean: Tensor, log_std: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
    """A reparameterised sample ``tanh(mean + std·noise)`` in ``(-1, 1)`` and its log-density.

    ``noise`` is standard normal and drawn by the caller, so the function is deterministic: it runs
    unchanged inside ``torch.func.vmap`` and inside a captured CUDA graph. The log-density includes
    the tanh change of variables, written as ``2·(log 2 − u − softplus(−2u))`` = ``log(1 − tanh²u)``
    because that form stays finite when ``|u|`` is large.
    """
    pre_tanh = mean + log_std.exp() * noise
    log_prob = (-0.5 * noise.square() - log_std - _HALF_LOG_2PI).sum(-1)
    log_prob = log_prob - (2.0 * (math.log(2.0) - pre_tanh - F.softplus(-2.0 * pre_tanh))).sum(-1)
    return torch.tanh(pre_tanh), log_prob
