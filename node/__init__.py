"""The daemon and the command line: the only package that joins `swarm/` and `expert/`.

The command line:

- `cli` — the `paris-node` commands that need no swarm (data, run init, train, sample, eval, demo).
- `cli_swarm` — the swarm commands: join (the daemon), doctor, status (the dashboard), fetch.
- `cli_eval` — `eval --run`: your own run on its held-out clips, per expert and per strategy, as a table or JSON.
- `cli_options` — typer options that both command modules take.
- `config` — where each `join` option comes from: flag, `PARIS_*` variable, `HOME/config.toml`, default.
- `console` — shared terminal output: one console, progress bars, one-line errors.
- `doctor` — `paris-node doctor`: one pass / warn / fail line per check of what makes a node work.

The daemon:

- `daemon` — the daemon behind `join`: open or join a run, take a role, train and publish, shut down cleanly.
- `lane` — one device of a daemon: the lease it holds, the training it drives, the role it plays now.
- `driver` — drives a trainer toward its target in a worker thread, checkpointing as it goes.
- `role_expert` — the expert role: hold a cluster's lease, resume or take over, train, publish, record DONE.
- `role_router` — the router role: take the router's lease, fetch a stratified sample, train, publish.
- `role_verifier` — the verifier role: check newly announced checkpoints, publish signed attestations.
- `role_seeder` — the seeder role: keep the run's data, accepted checkpoints and outcome records alive.
- `publisher` — the one place a node publishes checkpoints: store, announce, keep the right copies pinned.
- `checker` — a node's own check of a checkpoint before it uses one (validation loss, optional replay).
- `keeper` — this node's own long-lived records, kept alive while it runs.
- `bundle` — publishing a run into the swarm and fetching it back, verified (creator key, signed bundle).
- `assets` — a run's model assets (VAE folder, text weights, clip-embedding weights) in the content store.
- `nodefile` — `HOME/node.json`: how scripts and compose files find a running daemon.
- `logs` — daemon logging: readable lines, or one JSON object per line.
- `metrics` — the Prometheus metrics of one daemon (`join --metrics-port`).
- `tensorboard` — training and validation loss per slot as TensorBoard event files (`--tensorboard DIR`).

Watching and fetching:

- `swarm_view` — what `status` shows, as one typed snapshot built from the DHT and the gossip feed.
- `dashboard` — draws that snapshot as a rich renderable.
- `fetch` — `paris-node fetch`: every slot's newest accepted checkpoint, verified and assembled.
"""
