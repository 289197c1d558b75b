"""Method labels: the combiner name plus the settings that set a run apart from the other runs of
that combiner, e.g. ``"fairgrad (alpha=2)"`` (see :func:`label_methods`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def format_value(value: Any) -> str:
    """A hyperparameter value, compactly: ``2.0`` → ``"2"``, ``0.5`` → ``"0.5"``, ``1e-10`` → ``"1e-10"``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e16:
            return str(int(value))
        return repr(value)  # the shortest text that reads back as the same float
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return str(value)


def _hashable(value: Any) -> Any:
    """A value that can be compared and hashed (lists become tuples, mappings sorted item tuples)."""
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _hashable(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    return value


def _flatten(mapping: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = _hashable(value)
    return out


# Stands for a key that a run's config lacks (an older config), so it differs from any real value.
_ABSENT = "(unset)"


def label_methods(
    configs: Sequence[tuple[Mapping[str, Any], Mapping[str, Any], int]],
) -> list[tuple[str, dict[str, Any]]]:
    """Method labels for runs given as ``(combiner, agent, steps)``, and the hyperparameters in each label.

    A label is the combiner name plus every setting that differs between runs of that combiner in
    ``configs``: its hyperparameters first (``alpha=2``), then agent hyperparameters (``agent.tau=0.01``)
    and the training length (``steps=80000``), so runs pooled as seeds of one method never differ in
    more than their seed. A combiner whose runs all agree is labelled by its name alone.
    """
    # Per run: the combiner name, then its settings in label order (combiner, agent, training length).
    settings: list[tuple[str, list[dict[str, Any]]]] = [
        (
            str(combiner.get("name", "unknown")),
            [
                {k: _hashable(v) for k, v in combiner.items() if k != "name"},
                _flatten(agent, "agent."),
                {"steps": steps},
            ],
        )
        for combiner, agent, steps in configs
    ]
    labels = []
    for name, parts in settings:
        same = [other for other_name, other in settings if other_name == name]
        params: dict[str, Any] = {}
        for i, part in enumerate(parts):
            for key in sorted(set().union(*(other[i].keys() for other in same))):
                # A key that an older config lacks is compared among the runs that have it.
                if len({other[i][key] for other in same if key in other[i]}) > 1:
                    params[key] = part.get(key, _ABSENT)
        text = ", ".join(f"{k}={format_value(v)}" for k, v in params.items())
        labels.append((f"{name} ({text})" if text else name, params))
    return labels
