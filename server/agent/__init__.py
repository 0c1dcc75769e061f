"""The agent: ``process`` (the ``Agent`` and ``run_agent``: Raft, HTTP, serf, lifecycle),
``local`` (this agent's services and checks), ``checks`` (check runners), ``serf_lan`` (the LAN
pool and Consul's member tags) and ``leader`` (leader duties). This package imports nothing, so
any layer may import one of its modules without pulling in the others."""
