"""Wire and disk schemas shared by every part of paris-node (pydantic v2).

Imports nothing else of ours: `swarm/`, `expert/` and `node/` all depend on it, never the reverse.
"""
