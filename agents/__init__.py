"""Multi-task agents, installed as ``mtrl_fair.agents``."""
