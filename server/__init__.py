"""The Proconsul agent: everything Consul-specific (HTTP API, catalog, KV, federation)."""

__version__ = "0.1.0"
