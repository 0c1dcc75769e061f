"""Leader-only routines of a server (Consul's ``agent/consul/leader*.go``): each is a
``ServerContext`` service that starts its loops when this server gains Raft leadership and
stops them when it loses it."""
