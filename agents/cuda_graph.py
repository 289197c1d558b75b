"""One SAC update recorded as a CUDA graph, then replayed every iteration.

An eager update on a GPU is bound by kernel launches: hundreds of small kernels, each waiting for
Python. Recorded once with ``torch.cuda.graph`` and replayed, the same update is one launch. The
update must then be capturable: no host synchronisation, no data-dependent shapes, and every state
change made in place. :class:`UpdateGraph` holds the recording and its static input and output
tensors; the agent decides when to warm up, capture and replay.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence

import torch

from mtrl_fair.agents.buffer import TaskBatch
from mtrl_fair.agents.stats import UpdateStats

__all__ = ["GRAPH_WARMUP_UPDATES", "UpdateGraph"]

# Eager updates before the capture: they allocate the optimizers' state and warm up cuBLAS, Triton
# and the allocator on a side stream, as CUDA graph capture requires.
GRAPH_WARMUP_UPDATES = 3


class UpdateGraph:
    """One update recorded as a CUDA graph: static batch tensors in, static statistics out.

    Everything the update changes (weights, optimizer moments and steps, target networks,
    temperatures, skip counters, combiner state) is changed in place, so each replay continues
    from the last. The batch is sampled outside the graph (the buffer's fill level changes every
    iteration) and copied into the static tensors. The statistics returned by :meth:`replay` are the
    same tensors every time, overwritten by the next replay.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.graph: torch.cuda.CUDAGraph | None = None
        self.batch: TaskBatch | None = None
        self.stats: UpdateStats | None = None
        self.failed = False
        self.failure = ""
        self.warm_ups = 0
        self._side_stream: torch.cuda.Stream | None = None

    def run(
        self,
        batch: TaskBatch,
        update: Callable[[TaskBatch, bool], UpdateStats],
        generators: Sequence[torch.Generator],
        description: str,
    ) -> UpdateStats:
        """``update(batch, False)`` through the graph: eager warm-ups first (also after a resume, since
        this process has not run one), then one capture, then replays. An update that cannot be
        captured runs eagerly from then on, after one warning naming ``description`` and the reason.
        ``generators``: the update's own random generators besides the device's default one (a
        combiner's, a packed run's), which must advance on each replay."""
        if self.failed:
            return update(batch, False)
        if self.warm_ups < GRAPH_WARMUP_UPDATES:
            return self.warm_up(lambda: update(batch, False))
        if self.stats is None and not self.capture(batch, update, generators):
            warnings.warn(
                f"the update with {description} could not be captured in a CUDA graph "
                f"({self.failure}); training goes on with the eager update",
                RuntimeWarning,
                stacklevel=4,
            )
            return update(batch, False)
        return self.replay(batch)

    def warm_up(self, update: Callable[[], UpdateStats]) -> UpdateStats:
        """Run one eager update on a side stream (a real update, not a rehearsal)."""
        if self._side_stream is None:
            self._side_stream = torch.cuda.Stream(self.device)
        current = torch.cuda.current_stream(self.device)
        self._side_stream.wait_stream(current)
        with torch.cuda.stream(self._side_stream):
            stats = update()
        current.wait_stream(self._side_stream)
        self.warm_ups += 1
        return stats

    def capture(
        self,
        batch: TaskBatch,
        update: Callable[[TaskBatch, bool], UpdateStats],
        generators: Iterable[torch.Generator] = (),
    ) -> bool:
        """Record ``update`` on static copies of ``batch``; False (and ``failure``) if it cannot be."""
        self.batch = TaskBatch(*(tensor.clone() for tensor in batch))
        graph = torch.cuda.CUDAGraph()
        for generator in generators:
            graph.register_generator_state(generator)
        try:
            with torch.cuda.graph(graph):
                self.stats = update(self.batch, False)
        except Exception as error:  # any failure falls back to the eager update, with its reason
            self.failed, self.failure = True, (str(error).splitlines() or [type(error).__name__])[0]
            self.stats = None
            return False
        self.graph = graph
        return True

    def replay(self, batch: TaskBatch) -> UpdateStats:
        assert self.graph is not None
        assert self.batch is not None
        assert self.stats is not None
        for static, fresh in zip(self.batch, batch, strict=True):
            static.copy_(fresh)
        self.graph.replay()
        return self.stats
