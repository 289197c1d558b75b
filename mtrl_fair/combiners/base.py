"""The base classes every gradient combiner shares.

A combiner turns the Jacobian ``J`` of K per-task losses with respect to P shared parameters, a
``(K, P)`` tensor whose row ``i`` is the gradient of task ``i``, into one ``(P,)`` update direction.
It is pure tensor maths: it never sees parameters or optimisers and never calls ``backward()``.

Most methods are functions of the Gram matrix ``J Jᵀ`` alone: they pick task weights ``w`` from it
and return ``wᵀ J``. Those subclass :class:`GramianCombiner` and implement :meth:`weights`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, NamedTuple

from torch import Tensor


class Combination(NamedTuple):
    """What a combiner produced for one Jacobian."""

    direction: Tensor
    """The ``(P,)`` update direction for the shared parameters (to be descended, like a gradient)."""
    weights: Tensor
    """The ``(K,)`` effective task weights, so that ``direction == weights @ jacobian``."""


class Combiner(ABC):
    """Turns per-task gradients into one update direction.

    Subclasses list their hyperparameters in :meth:`hparams` (used by ``repr``) and validate them in
    ``__init__`` with a :class:`ValueError` that names the allowed values.
    """

    name: ClassVar[str]
    """Registry name, as accepted by :func:`mtrl_fair.combiners.make`."""
    requires_losses: ClassVar[bool] = False
    """True for loss-based methods (FAMO), whose :meth:`combine` needs the ``(K,)`` task losses."""
    wraps: ClassVar[tuple[str, ...]] = ()
    """Hyperparameters that hold another combiner (the α-fair loss transform's ``base``).

    By name they are registry names: :func:`~mtrl_fair.combiners.make` builds the inner combiner and
    passes the object, so that no method module needs the registry (which imports them all).
    """

    def __call__(self, jacobian: Tensor, losses: Tensor | None = None) -> Tensor:
        """The ``(P,)`` update direction for a ``(K, P)`` Jacobian."""
        return self.combine(jacobian, losses).direction

    @abstractmethod
    def combine(self, jacobian: Tensor, losses: Tensor | None = None) -> Combination:
        """The update direction and the effective task weights for a ``(K, P)`` Jacobian."""

    def hparams(self) -> dict[str, Any]:
        """The hyperparameters, as passed to the constructor."""
        return {}

    def spec(self) -> tuple[str, dict[str, Any]]:
        """The registry name and hyperparameters that rebuild this combiner with ``make(name, **hp)``."""
        return self.name, self.hparams()

    # Stateful combiners (FAMO, for instance) override these four. Stateless ones keep the defaults.
    def after_step(self, losses: Tensor) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Called once after the optimiser step with the ``(K,)`` task losses, detached."""

    def reset(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Forget any state accumulated across updates."""

    def state_dict(self) -> dict[str, Any]:
        """Tensors and numbers to checkpoint (loadable with ``torch.load(weights_only=True)``)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if state:
            raise ValueError(f"{type(self).__name__} is stateless but got state keys {sorted(state)}")

    def __repr__(self) -> str:
        args = ", ".join(f"{key}={value!r}" for key, value in self.hparams().items())
        return f"{type(self).__name__}({args})"


class GramianCombiner(Combiner):
    """A combiner whose task weights are a function of the Gram matrix ``J Jᵀ`` only.

    The direction is ``weights(J Jᵀ) @ J``. Implementations of :meth:`weights` must stay on the
    Gram matrix's device, use a fixed amount of work, and never read tensor values back to the host
    (no ``.item()``, no Python branch on a tensor), so that an update can run without host
    synchronisation and be captured in a CUDA graph.
    """

    @abstractmethod
    def weights(self, gram: Tensor) -> Tensor:
        """The ``(K,)`` task weights for a ``(K, K)`` positive semi-definite Gram matrix."""

    def combine(self, jacobian: Tensor, losses: Tensor | None = None) -> Combination:
        check_jacobian(jacobian)
        gram = jacobian @ jacobian.T
        weights = self.weights(gram).to(jacobian.dtype)
        return Combination(weights @ jacobian, weights)


def uses_after_step(combiner: Combiner) -> bool:
    """Whether ``combiner`` learns from :meth:`Combiner.after_step` (so the caller must call it)."""
    return type(combiner).after_step is not Combiner.after_step


def check_jacobian(jacobian: Tensor) -> None:
    """Raise a clear error unless ``jacobian`` is a non-empty ``(K, P)`` floating-point matrix."""
    if jacobian.ndim != 2 or jacobian.shape[0] == 0:
        raise ValueError(
            f"a combiner takes a (K, P) Jacobian with K >= 1 task rows, got shape {tuple(jacobian.shape)}"
        )
    if not jacobian.is_floating_point():
        raise ValueError(f"the Jacobian must be a floating-point tensor, got {jacobian.dtype}")


def check_losses(losses: Tensor | None, num_tasks: int, method: str) -> Tensor:
    """Raise a clear error unless ``losses`` is a ``(K,)`` tensor; return it."""
    if losses is None:
        raise ValueError(f"{method} is loss-based: pass the (K,) task losses as combine(jacobian, losses)")
    if losses.shape != (num_tasks,):
        raise ValueError(f"{method} needs ({num_tasks},) task losses, got shape {tuple(losses.shape)}")
    return losses


def symmetrize(gram: Tensor) -> Tensor:
    """The symmetric part of ``gram``: round-off in ``J Jᵀ`` can make it slightly asymmetric."""
    return 0.5 * (gram + gram.T)


def check_number(
    name: str,
    value: object,
    *,
    at_least: float | None = None,
    above: float | None = None,
    at_most: float | None = None,
    integer: bool = False,
) -> float:
    """Validate a numeric hyperparameter; raise a ValueError naming the allowed range otherwise."""
    allowed = []
    if at_least is not None:
        allowed.append(f">= {at_least}")
    if above is not None:
        allowed.append(f"> {above}")
    if at_most is not None:
        allowed.append(f"<= {at_most}")
    kind = "an integer" if integer else "a number"
    expected = f"{kind} {' and '.join(allowed)}".strip()
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (integer and not isinstance(value, int))
    ):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    number = float(value)
    if (
        number != number  # NaN
        or (at_least is not None and number < at_least)
        or (above is not None and number <= above)
        or (at_most is not None and number > at_most)
    ):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return number


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """Validate a string hyperparameter against its allowed values."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return str(value)
