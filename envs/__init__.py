"""Environments under the framework's env contract, selected with ``env=<name>``."""

from envs.registry import env_kinds, make_env, make_vector_env, register_env_kind

__all__ = ["env_kinds", "make_env", "make_vector_env", "register_env_kind"]
