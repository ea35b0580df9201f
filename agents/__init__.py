"""Node-side code: the agent daemon, its worker pool and worker processes."""
