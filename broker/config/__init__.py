"""Configuration: the typed model, the HOCON parser and the loader that binds one onto the other."""

from .errors import ConfigError, ConfigIssue, Origin
from .loader import embedded_default, load_file, load_string, parse_bind
from .model import BrokerConfig

__all__ = ["BrokerConfig", "ConfigError", "ConfigIssue", "Origin", "embedded_default", "load_file", "load_string",
           "parse_bind"]
