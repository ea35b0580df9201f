"""The coordinator: leader election, the agent directory, what agents say, the client
front and the scheduler (plain classes that take ``now`` and return actions), driven by
one poller loop that owns the sockets (service); report reads them for status and metrics."""
