"""The shared contract: what every process of a cluster agrees on.

Messages (wire), ZooKeeper paths and records (layout), how functions, arguments
and results are encoded (payload), settings (config), keys (security), the
version, and the liveness rule. Pure: no sockets, no ZooKeeper; it imports
nothing else of this project.
"""
