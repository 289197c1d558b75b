"""mtrl-fair: multi-task reinforcement learning with fast, exact gradient combiners."""

__version__ = "0.1.0"
