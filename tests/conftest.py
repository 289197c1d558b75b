"""Test-wide settings.

Hypothesis draws its examples from a fixed seed by default (``derandomize``), so a CI run is
reproducible and a red run is never a matter of luck. To search new examples, run
``pytest --hypothesis-profile=explore`` (random seeds, more examples) and turn any failure it finds
into a plain regression test.
"""

from hypothesis import settings

settings.register_profile("default", derandomize=True, deadline=None)
settings.register_profile("explore", derandomize=False, deadline=None, max_examples=500)
settings.load_profile("default")
