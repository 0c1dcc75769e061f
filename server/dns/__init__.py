"""Consul's DNS interface (port 8600, UDP and TCP), wire format by dnspython.

* ``names``: question name -> what it asks for (pure);
* ``catalog``: ``DnsCatalog``, the seam to the data (``StoreCatalog`` on servers);
* ``resolver``: ``DnsResolver``, wire bytes in, wire bytes out (no sockets);
* ``server``: ``DnsServer``, the UDP/TCP listeners, an agent ``Service``.
"""

from server.dns.catalog import DnsCatalog, DnsInstance, DnsNode, StoreCatalog
from server.dns.resolver import DnsResolver, DnsSettings
from server.dns.server import DnsServer

__all__ = [
    "DnsCatalog",
    "DnsInstance",
    "DnsNode",
    "DnsResolver",
    "DnsServer",
    "DnsSettings",
    "StoreCatalog",
]
