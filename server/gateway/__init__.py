"""The mesh gateway (issue 6): an SNI router that reads a TLS ClientHello without terminating
TLS and forwards the connection, bytes unchanged, to a local server, a local service instance or
a remote datacenter's gateway.

Sans-I/O parts (no sockets, no clocks, no ``random`` import):

- :mod:`server.gateway.clienthello` — an incremental, bounded ClientHello parser that returns
  the SNI server name;
- :mod:`server.gateway.routes` — classifies an SNI name against a routing table.
"""
