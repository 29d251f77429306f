"""Wire and disk schemas shared by every part of paris-node (pydantic v2).

Imports nothing else of ours: `swarm/`, `expert/` and `node/` all depend on it, never the reverse.

The modules:

- `atomic` — atomic file writes (temp file, fsync, rename): a crash leaves the old file or the new one.
- `canonical` — canonical encoding and content hashes, so every peer derives the same id from the same record.
- `checkpoint` — checkpoint metadata: what a checkpoint folder holds and how to verify it before use.
- `data` — the data set manifest: its shards, their hashes, and what each clip carries.
- `errors` — `ParisError`: errors with a one-line message for the user (the CLI prints no traceback).
- `model` — the configs that define an expert: backbone shape, text encoder, training hyper-parameters.
- `records_io` — reading a pydantic record from a JSON file, with a one-line error naming the file and field.
- `run_config` — the run config file (`run init --config`): every field a researcher sets; presets fill the rest.
- `run` — the run spec: the one record every peer of a run agrees on (data, clusters, preset, targets).
- `swarm_cas` — content addressing: CIDv1 chunk ids, the manifest that lists them, the chunk-transfer frames.
- `swarm_dialback` — the `paris-dialback/1` request and answer behind `doctor`'s reachability check.
- `swarm_gossip` — gossip events, and the frames between the daemon and its gossip worker process.
- `swarm_records` — the DHT record schemas: what every key holds, how a value is encoded and checked.
- `swarm_run` — the run bundle: each cluster's data by CID and the daemon's schedule, besides the spec.
"""
