"""The scale benchmark behind `clusterctl bench scale` and `make scale`."""
