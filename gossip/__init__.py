"""The gossip library (coming): SWIM + Lifeguard membership with a Serf-style layer.

Like ``raft``, it will know nothing of Consul. See docs/ARCHITECTURE.md.
"""
