# dc1, the primary datacenter: shared by its three servers. Each server adds its own
# node_name, bind_addr and certificate through CONSUL_LOCAL_CONFIG (see docker-compose.yml).
datacenter         = "dc1"
primary_datacenter = "dc1"
server             = true
bootstrap_expect   = 3
client_addr        = "0.0.0.0"
retry_join         = ["198.18.1.11", "198.18.1.12", "198.18.1.13"]

# Federation through mesh gateways: no retry_join_wan. Secondaries reach this datacenter
# through its gateways (they name them in primary_gateways); the primary never joins outward.
connect {
  enabled                            = true
  enable_mesh_gateway_wan_federation = true
}

# Everything that crosses a gateway is mutual TLS, checked against server.<dc>.consul names.
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
