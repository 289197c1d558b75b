"""The networks of R runs packed together: every layer holds the R runs' weights stacked first.

A pack's actor runs the R actors' layers as one batched product per layer (``torch.baddbmm``), and
its critic the R twin critics as one ensemble of 2R members, so that R runs cost the kernel launches
of one. Each run's numbers are those it computes alone: the solo networks
(:class:`~mtrl_fair.agents.networks.Actor`, :class:`~mtrl_fair.agents.networks.TwinCritic`) use the
same batched kernels with one member, and a product's result does not depend on how many others
are batched with it. :func:`pack_modules` builds a pack from solo networks and
:func:`member_state_dict` / :func:`load_member_state_dict` convert one run's weights back and forth,
so a packed run's checkpoints are ordinary ones.

Inputs carry the run first: observations ``(R, *batch, obs_dim)``; the critic returns
``(2, R, *batch)``, its twin members first, as the loss functions of
:mod:`~mtrl_fair.agents.sac_losses` expect.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtrl_fair.agents.networks import LOG_STD_MAX, LOG_STD_MIN, Actor, EnsembleLinear, TwinCritic

__all__ = [
    "PackedActor",
    "PackedCritic",
    "PackedEnsembleLinear",
    "PackedLinear",
    "load_member_state_dict",
    "member_state_dict",
    "pack_modules",
]


class PackedLinear(nn.Module):
    """R runs' ``nn.Linear(in_features, out_features)`` layers: ``weight (R, out, in)``, ``bias (R, out)``."""

    def __init__(self, runs: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(runs, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(runs, out_features))
        bound = 1.0 / math.sqrt(in_features)  # nn.Linear's initialisation (replaced by pack_modules)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        """``(R, N, in)`` → ``(R, N, out)``, each run with its own weights."""
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))

    def task_gradients(
        self, inputs: Tensor, output_grads: Tensor, num_tasks: int, out: Mapping[str, Tensor] | None = None
    ) -> dict[str, Tensor]:
        """Per-run, per-task gradients ``(R, K, out, in)`` and ``(R, K, out)`` (rows of each run
        task-major, see :mod:`mtrl_fair.layer_jacobian`); written into ``out[name]`` when given."""
        runs, _, in_features = inputs.shape
        out_features = output_grads.shape[-1]
        x = inputs.reshape(runs * num_tasks, -1, in_features)
        delta = output_grads.reshape(runs * num_tasks, -1, out_features)
        flat_weight = flat_bias = None
        if out is not None:
            flat_weight = out["weight"].view(runs * num_tasks, out_features, in_features)
            flat_bias = out["bias"].view(runs * num_tasks, out_features)
        weight = torch.bmm(delta.transpose(1, 2), x, out=flat_weight)
        bias = torch.sum(delta, dim=1, out=flat_bias)
        return {
            "weight": weight.view(runs, num_tasks, out_features, in_features),
            "bias": bias.view(runs, num_tasks, out_features),
        }


class PackedEnsembleLinear(EnsembleLinear):
    """The layers of R runs' twin critics: ``members = 2R``, run ``r``'s twins at ``2r, 2r + 1``."""

    def __init__(self, runs: int, members_per_run: int, in_features: int, out_features: int) -> None:
        super().__init__(runs * members_per_run, in_features, out_features)
        self.runs, self.members_per_run = runs, members_per_run

    def task_gradients(
        self, inputs: Tensor, output_grads: Tensor, num_tasks: int, out: Mapping[str, Tensor] | None = None
    ) -> dict[str, Tensor]:
        """Per-run, per-task gradients ``(R, K, members_per_run, in, out)`` and ``(R, K, members_per_run,
        1, out)``: run ``r``'s block is what the solo layer gives, in the solo layout."""
        runs, twins = self.runs, self.members_per_run
        in_features, out_features = inputs.shape[-1], output_grads.shape[-1]
        # Rows regrouped (run, task, member)-major, as the solo layer regroups (task, member).
        x = inputs.reshape(runs, twins, num_tasks, -1, in_features).transpose(1, 2)
        x = x.reshape(runs * num_tasks * twins, -1, in_features)
        delta = output_grads.reshape(runs, twins, num_tasks, -1, out_features).transpose(1, 2)
        delta = delta.reshape(runs * num_tasks * twins, -1, out_features)
        flat_weight = flat_bias = None
        if out is not None:
            flat_weight = out["weight"].view(runs * num_tasks * twins, in_features, out_features)
            flat_bias = out["bias"].view(runs * num_tasks * twins, out_features)
        weight = torch.bmm(x.transpose(1, 2), delta, out=flat_weight)
        bias = torch.sum(delta, dim=1, out=flat_bias)
        return {
            "weight": weight.view(runs, num_tasks, twins, in_features, out_features),
            "bias": bias.view(runs, num_tasks, twins, 1, out_features),
        }


class PackedActor(nn.Module):
    """R runs' squashed-Gaussian actors: ``forward(obs (R, *batch, obs_dim))`` → ``(mean, log_std)``."""

    def __init__(self, runs: int, obs_dim: int, action_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        widths = [obs_dim, *hidden, 2 * action_dim]
        self.layers = nn.ModuleList(PackedLinear(runs, a, b) for a, b in itertools.pairwise(widths))

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        runs, *batch, obs_dim = obs.shape
        x = obs.reshape(runs, -1, obs_dim)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        mean, log_std = x.reshape(runs, *batch, -1).chunk(2, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)


class PackedCritic(nn.Module):
    """R runs' twin critics as one ensemble: ``forward(obs, action)`` → ``(2, R, *batch)`` Q-values."""

    def __init__(self, runs: int, obs_dim: int, action_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.runs = runs
        widths = [obs_dim + action_dim, *hidden, 1]
        self.layers = nn.ModuleList(PackedEnsembleLinear(runs, 2, a, b) for a, b in itertools.pairwise(widths))

    def forward(self, obs: Tensor, action: Tensor) -> Tensor:
        x = torch.cat([obs, action], dim=-1)
        runs, *batch, width = x.shape
        # Each run's inputs go to its two members (the solo critic expands them to its two).
        x = x.reshape(runs, 1, -1, width).expand(runs, 2, -1, width).reshape(2 * runs, -1, width)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x.reshape(runs, 2, *batch).transpose(0, 1)


def pack_modules(
    actors: Sequence[Actor], critics: Sequence[TwinCritic], hidden: Sequence[int]
) -> tuple[PackedActor, PackedCritic]:
    """A packed actor and critic holding exactly the weights of the given solo networks, in order."""
    runs = len(actors)
    first = actors[0].net[0]
    action_dim = actors[0].net[-1].out_features // 2
    actor = PackedActor(runs, first.in_features, action_dim, hidden)
    critic = PackedCritic(runs, first.in_features, action_dim, hidden)
    for run in range(runs):
        load_member_state_dict(actor, critic, run, actors[run].state_dict(), critics[run].state_dict())
    return actor, critic


def _actor_linears(actor: PackedActor) -> Sequence[PackedLinear]:
    # A ModuleList's items are typed as nn.Module; these are the PackedActor's own layers.
    return cast("Sequence[PackedLinear]", actor.layers)


def _critic_linears(critic: PackedCritic) -> Sequence[PackedEnsembleLinear]:
    return cast("Sequence[PackedEnsembleLinear]", critic.layers)


def _actor_layers(actor_state: Mapping[str, Tensor]) -> list[str]:
    """The solo actor's linear layers by state-dict prefix (``net.0``, ``net.2``, ...), in order."""
    return sorted({key.rsplit(".", 1)[0] for key in actor_state}, key=lambda prefix: int(prefix.split(".")[1]))


@torch.no_grad()
def member_state_dict(actor: PackedActor, critic: PackedCritic, run: int) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Run ``run``'s weights as the state dicts of a solo :class:`Actor` and :class:`TwinCritic`."""
    actor_state = {}
    for index, layer in enumerate(_actor_linears(actor)):
        actor_state[f"net.{2 * index}.weight"] = layer.weight[run].clone()
        actor_state[f"net.{2 * index}.bias"] = layer.bias[run].clone()
    twins = slice(2 * run, 2 * run + 2)
    critic_state = {}
    for index, layer in enumerate(_critic_linears(critic)):
        critic_state[f"layers.{index}.weight"] = layer.weight[twins].clone()
        critic_state[f"layers.{index}.bias"] = layer.bias[twins].clone()
    return actor_state, critic_state


@torch.no_grad()
def load_member_state_dict(
    actor: PackedActor,
    critic: PackedCritic,
    run: int,
    actor_state: Mapping[str, Tensor],
    critic_state: Mapping[str, Tensor],
) -> None:
    """Put a solo actor's and twin critic's state dicts in place of run ``run``'s weights."""
    prefixes = _actor_layers(actor_state)
    if len(prefixes) != len(actor.layers) or len(critic_state) != 2 * len(critic.layers):
        raise ValueError("the saved networks do not have the pack's layers (agent.hidden_sizes differ)")
    for layer, prefix in zip(_actor_linears(actor), prefixes, strict=True):
        layer.weight[run].copy_(actor_state[f"{prefix}.weight"])
        layer.bias[run].copy_(actor_state[f"{prefix}.bias"])
    twins = slice(2 * run, 2 * run + 2)
    for index, layer in enumerate(_critic_linears(critic)):
        layer.weight[twins].copy_(critic_state[f"layers.{index}.weight"])
        layer.bias[twins].copy_(critic_state[f"layers.{index}.bias"])
