"""A run's configuration: the fields and their roles (:mod:`.fields`), the notebook's parameters
(:mod:`.parameters`). Checking a configuration against the registries and filling its protocol's
defaults is :func:`ltkit.training.check.make_config`, above the registries it reads. No torch."""

from .fields import FIELDS, ConfigError, RunConfig, pack_key, parse_data_tag, role

__all__ = ["FIELDS", "ConfigError", "RunConfig", "pack_key", "parse_data_tag", "role"]
