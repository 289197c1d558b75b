"""Meta-World benchmark construction and evaluation, installed as ``mtrl_fair.envs``."""
