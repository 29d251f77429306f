"""The daemon and the command line: the only package that joins `swarm/` and `expert/`.

The command line:

- `cli` — the `paris-node` commands that need no swarm (data, run init, train, sample, eval, demo).
- `cli_swarm` — the swarm commands: join (the daemon), doctor, status (the dashboard), fetch.
- `cli_eval` — `eval --run`: your own run on its held-out clips, per expert and per strategy, as a table or JSON.
- `cli_options` — typer options that both command modules take.
- `config` — where each `join` option comes from: flag, `PARIS_*` variable, `HOME/config.toml`, default.
- `join_config` — `join`'s options as one validated object, and the daemon options it makes (`--print-config`).
- `console` — shared terminal output: one console, progress bars, one-line errors.
- `doctor` — `paris-node doctor`: one pass / warn / fail line per check of what makes a node work.

The daemon (arrows: daemon → loops, role_loop → roles → lane, context; nothing points back at the daemon):

- `daemon` — the daemon's lifecycle: start, build the context, start the loops and lanes, stop on a signal.
- `options` — `DaemonOptions`: everything the daemon was asked to do, validated once.
- `run_open` — the run a daemon works on: fetched and verified, or published (a run file, the demo run).
- `context` — `NodeContext`: what the roles and loops share (node, store, run, checker, publisher, one read).
- `shared_read` — one read of the run shared by the loops: in flight, or good for half a period.
- `loops` — the background loops: progress, member record, reconnects, record keeping, pointer, verification.
- `gossip_link` — the daemon's link to its gossip worker: started, restarted, told our events, waking us.
- `members` — where the run's members listen, kept past their records' TTL for reconnects.
- `status` — a snapshot of every lane and the node's counters: what metrics and `node.json` read.
- `lane` — one device of a daemon: the role it plays now, the cluster it holds, the training it drives.
- `driver` — drives a trainer toward its target in a worker thread, checkpointing as it goes.
- `role_loop` — which role each lane plays, chosen again whenever one ends.
- `role_expert` — the expert role: hold a cluster's lease, resume or take over, train, publish, record DONE.
- `role_router` — the router role: take the router's lease, fetch a stratified sample, train, publish.
- `role_verifier` — the verifier: check the checkpoints assigned to this node, publish signed attestations.
- `role_seeder` — the seeder role: keep the run's data, accepted checkpoints and outcome records alive.
- `takeover` — where a trainer starts: the newest accepted checkpoint it checked itself, or its own.
- `run_data` — what a slot trains on (cluster clips, the router's stratified sample), for trainers and replays.
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
- `disputes` — settling a contested replay where a reader stands: replay it here, bounded (`fetch`).
"""
