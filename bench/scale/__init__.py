"""The scale benchmark: a real coordinator and ZooKeeper against thousands of simulated agents."""
