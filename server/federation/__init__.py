"""WAN federation: the WAN pool's router, cross-datacenter server RPC, the mesh-gateway
locator, the wanfed gossip transport and federation states (issue 6). Nothing is imported
here; import the modules themselves."""
