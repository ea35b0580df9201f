"""`clusterctl dashboard`: a live web page of the cluster, in a process of its own (docs/operations.md)."""
