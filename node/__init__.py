"""The daemon and the command line: the only package that joins `swarm/` and `expert/`."""
