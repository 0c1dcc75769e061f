"""Agent configuration: Consul's flags and JSON/HCL config files, merged and validated into
one ``RuntimeConfig``.

- ``load_runtime_config(args)``: from ``proconsul agent``'s parsed flags (``server.config.flags``).
- ``load(LoadOptions)``: the same from explicit options (``server.config.load``).
- ``ConfigError``: every refusal, one line naming the file or flag.
"""

from server.config.flags import add_agent_flags, load_runtime_config, options_from_args
from server.config.load import ConfigError, LoadOptions, load
from server.config.runtime import RuntimeConfig

__all__ = [
    "ConfigError",
    "LoadOptions",
    "RuntimeConfig",
    "add_agent_flags",
    "load",
    "load_runtime_config",
    "options_from_args",
]
