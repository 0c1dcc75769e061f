"""The mesh gateway (issue 6): an SNI router that reads a TLS ClientHello without terminating
TLS and forwards the connection, bytes unchanged, to a local server, a local service instance or
a remote datacenter's gateway. Run by ``proconsul connect envoy -gateway=mesh`` /
``proconsul connect mesh-gateway`` (``server.clicmd.connect``).

Sans-I/O parts (no sockets, no clocks, no ``random`` import; ``tests/unit/test_core_purity.py``
checks every module at this level):

- :mod:`server.gateway.clienthello` — an incremental, bounded ClientHello parser that returns
  the SNI server name;
- :mod:`server.gateway.routes` — classifies an SNI name against a routing table;
- :mod:`server.gateway.tables` — the agent's JSON (local servers, federation states) to
  routing inputs, and the metrics label of a route;
- :mod:`server.gateway.config` — settings, listeners, the catalog registration body;
- :mod:`server.gateway.stats` — counters, rendered as JSON and Prometheus text.

The I/O (asyncio) lives in :mod:`server.gateway.aio`: the proxy and its two data paths
(``os.splice`` and an asyncio Protocol pair), the watches on the local agent, the
registration, the admin server and the process.
"""
