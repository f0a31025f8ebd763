"""Typed configuration: schema dataclasses, YAML + command-line loading, validation."""

from diffaug.config.load import (
    ConfigError,
    config_from_dict,
    config_hash,
    load_config,
    save_config,
    to_dict,
)
from diffaug.config.schema import (
    ClusterConfig,
    Config,
    DataConfig,
    ExportConfig,
    LoggingConfig,
    ModelConfig,
    ObjectiveConfig,
    SamplingConfig,
    TrainingConfig,
)

__all__ = [
    "ClusterConfig", "Config", "ConfigError", "DataConfig", "ExportConfig", "LoggingConfig", "ModelConfig",
    "ObjectiveConfig", "SamplingConfig", "TrainingConfig", "config_from_dict", "config_hash", "load_config",
    "save_config", "to_dict",
]
