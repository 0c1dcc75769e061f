"""Server RPC: what a server that is not the Raft leader asks the leader (gRPC, on the Raft
transport's port). ``service`` answers on the leader; ``client`` is the follower side and
implements ``server.endpoints.context.LeaderRPC``."""
