"""Packing a sweep: the runs that differ only in ``seed`` (and ``combiner.alpha``) become one job.

``mtrl-fair train -m seed=0,1,2,3 combiner.alpha=0,2 pack=true`` is rewritten before Hydra launches
it: the sweeps over the packable keys become one ``pack_runs`` value listing each run's own
overrides, and every other sweep stays a sweep. Hydra's launcher (local, Ray, SLURM) then runs one
job per combination of the other keys, and each job trains its runs in one process
(:mod:`mtrl_fair.packed_training`), each in the run directory an unpacked sweep gives it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser

__all__ = ["PACKABLE_KEYS", "PackingError", "pack_overrides", "run_dirname", "run_overrides"]

PACKABLE_KEYS = ("seed", "combiner.alpha")
"""The keys whose values the runs of a pack may differ in."""


class PackingError(ValueError):
    """A sweep that cannot be packed as asked; the message says why and what to do."""


def pack_overrides(overrides: Sequence[str]) -> list[str]:
    """``overrides`` of a packed sweep rewritten: sweeps over :data:`PACKABLE_KEYS` into ``pack_runs``.

    Hydra's flags and its own keys (``hydra.…``, ``hydra/…``) pass unchanged, as do the other
    sweeps. ``pack=true`` stays, so that each job knows it belongs to a packed sweep.

    Raises:
        PackingError: when no packable key is swept.
    """
    task = [o for o in overrides if not o.startswith(("-", "hydra.", "hydra/"))]
    parsed = OverridesParser.create().parse_overrides(task)
    axes: list[list[str]] = []
    kept: list[str] = []
    for override, text in zip(parsed, task, strict=True):
        if override.key_or_group in PACKABLE_KEYS and override.is_sweep_override():
            axes.append([f"{override.key_or_group}={value}" for value in override.sweep_string_iterator()])
        else:
            kept.append(text)
    if not axes:
        raise PackingError(
            f"pack=true packs the runs of a sweep over {' or '.join(PACKABLE_KEYS)}, and this sweep has "
            "neither; e.g. mtrl-fair train -m seed=0,1,2,3 pack=true"
        )
    runs = [" ".join(sorted(lines)) for lines in itertools.product(*axes)]
    listed = ",".join(f"'{run}'" for run in runs)
    flags_and_hydra = [o for o in overrides if o not in task]
    return [*flags_and_hydra, *kept, f"pack_runs=[{listed}]"]


def run_overrides(run: str) -> list[str]:
    """One run's overrides from its ``pack_runs`` entry (``"combiner.alpha=2 seed=0"``), checked.

    Raises:
        PackingError: for a key that runs of a pack may not differ in.
    """
    lines = run.split()
    for line in lines:
        key, sep, _ = line.partition("=")
        if not sep or key not in PACKABLE_KEYS:
            raise PackingError(
                f"pack_runs entry {run!r}: the runs of a pack may differ only in {', '.join(PACKABLE_KEYS)}"
            )
    return lines


def run_dirname(job_lines: Sequence[str], run_lines: Sequence[str], *, item_sep: str = ",", kv_sep: str = "=") -> str:
    """The directory name an unpacked sweep gives the run: Hydra's ``override_dirname`` of the job's
    own overrides (already without the excluded keys) and the run's, sorted."""
    return item_sep.join(sorted([*job_lines, *run_lines])).replace("=", kv_sep)
