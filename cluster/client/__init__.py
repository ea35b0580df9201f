"""The client side: a session with the leader (``ClusterClient``) that holds each
job's tasks until their results arrive, and ``Executor`` on top of it."""
