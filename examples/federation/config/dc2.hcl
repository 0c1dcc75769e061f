# dc2, a secondary datacenter: shared by its three servers. Each server adds its own
# node_name, bind_addr and certificate through CONSUL_LOCAL_CONFIG (see docker-compose.yml).
datacenter         = "dc2"
primary_datacenter = "dc1"
server             = true
bootstrap_expect   = 3
client_addr        = "0.0.0.0"
retry_join         = ["198.18.2.11", "198.18.2.12", "198.18.2.13"]

connect {
  enabled                            = true
  enable_mesh_gateway_wan_federation = true
}

# The primary's mesh gateways, by their WAN addresses: the only addresses of dc1 that dc2's
# servers ever dial. They join dc1's WAN pool through them; once federation states are
# replicated, dc2's own gateways carry the traffic and these remain the fallback.
primary_gateways          = ["198.18.3.11:8443", "198.18.3.12:8443"]
primary_gateways_interval = "5s"
retry_interval_wan        = "5s"

tls {
  defaults {
    ca_file         = "/consul/certs/consul-agent-ca.pem"
    verify_incoming = true
    verify_outgoing = true
  }
  internal_rpc {
    verify_server_hostname = true
  }
}
