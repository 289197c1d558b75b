"""Hydra configuration files shipped with mtrl-fair (``pkg://mtrl_fair.configs``)."""
