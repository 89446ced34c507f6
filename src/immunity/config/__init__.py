"""Configuration: pydantic models of immunity.yaml and the loader that validates them."""

from immunity.config.load import LoadedConfig, load, parse, resolve_path
from immunity.config.models import Config

__all__ = ["Config", "LoadedConfig", "load", "parse", "resolve_path"]
