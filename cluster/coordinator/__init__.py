"""The coordinator: leader election, the agent directory, the client front and
the scheduler (plain classes that take ``now``), driven by one poller loop that
owns the sockets (service)."""
