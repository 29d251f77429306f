"""The ML half of paris-node: data, clustering, the video diffusion expert, training, sampling.

Imports `protocol` only; no networking lives here.

Data:

- `synth` — the built-in "moving shapes" text-to-video generator.
- `synth_dataset` — writes the synthetic data set as verified shards.
- `prepare` — `data prepare`: real video files + captions → the same verified shards.
- `shards` — data sets on disk: safetensors shards plus a manifest with a hash per shard.
- `shard_rows` — rows of a tensor kept in shards on disk, read when a batch asks for them (streamed data).
- `latent_data` — a data set encoded once: clips through a latent preset's VAE, captions through a stored
  text encoder.
- `embed` — the clip embeddings that partition the data before training.
- `cluster` — partitioning the data into K clusters (DDM / Paris step 1) and reporting what they mean.
- `run_init` — `run init`: embed every clip, cluster, and write the run spec.
- `assets` — where this machine keeps a run's model assets (VAE folder, text weights), found by CID.

The model and its training:

- `presets` — the named presets (`tiny`, `small`, `tiny-latent`, `base`, `large`).
- `backbone` — building the expert network, and the codec between frames and the space it denoises in.
- `text` — the frozen open_clip text tower that turns caption tokens into per-token states.
- `text_hf` — a `transformers` text encoder (T5/UMT5, CLIP text) by folder, its states stored at `run init`.
- `init_weights` — experts that start from an open Wan transformer folder: its shape, its weights, by CID.
- `flow` — flow matching in the convention of diffusers' FlowMatchEulerDiscreteScheduler.
- `router` — the router r(x_t, t [, text]) → K logits, trained toward the posterior p(k | x_t, t).
- `train_loop` — the training loop shared by experts and the router: steps, EMA, checkpoints, resume.
- `train_inputs` — what a trainer trains on: the run's verified clips, latents and caption states computed once.
- `train_expert` — the expert trainer: flow matching on one cluster's clips (`trainer_for_run`).
- `train_router` — the router trainer: cross-entropy against the true cluster on noisy clips.
- `router_preset` — the run's router as pure rules (preset, sample, held-out clips); no torch.
- `optimizer_state` — whether a peer's AdamW state could have come from clipped training.
- `efficiency` — TF32, fused AdamW, `torch.compile`, gradient checkpointing: runtime choices, not the run's.
- `ddp` — one expert trained on several local devices with DistributedDataParallel.
- `device` — `--gpu N|cpu` → a torch device, before the model stack is imported.
- `checkpoint` — checkpoint folders: safetensors for every tensor, `checkpoint.json` for the rest.
- `checkpoint_writer` — checkpoints written off the training thread from a host-memory snapshot.
- `threads` — a thread pool whose idle threads end, and with them the OpenMP teams that slow training.
- `seeding` — seeded builds (an expert's step-0 weights, a random text tower) under one process-wide lock.
- `sizes` — how large a preset's checkpoint can be, computed on the meta device (bounds downloads).
- `validation` — the deterministic validation loss that judges a checkpoint on every machine alike.
- `verify` — checking a checkpoint's content against its record, and replaying the interval it covers.

Sampling and evaluation:

- `sampling` — sampling one expert with classifier-free guidance; `velocity` for the ensemble.
- `routing` — routing strategies: from the router's posterior to the weights that mix the experts.
- `pipeline` — `ParisPipeline`: the assembled ensemble as one diffusers pipeline.
- `vae` — any diffusers VAE from its own folder: class from its config, compression and channels measured.
- `video_decode` — streamed decoding of one clip: seek, only the frames it needs, at the run's fps, resized.
- `video_layouts` — the common dataset layouts (captions tables, Panda-70M, VideoFolder, webdataset tars).
- `video_io` — writing generated videos: GIF through Pillow, MP4 (H.264) through PyAV.
- `evaluate` — offline evaluation: FVD-synth, prompt-attribute accuracy, FVD and CLIP similarity.
- `evaluate_run` — your own run on its held-out clips: FVD, CLIP score, validation loss per expert and strategy.
- `conditioning` — whether a model uses its caption, measured on real clips noised to fixed levels.
- `synth_classifier` — the judge: a small video classifier trained on the generator's own clips.
- `metrics` — the Fréchet distance between two feature sets (FID / FVD / FVD-synth).
- `i3d` — FVD's feature network (Inception-v1 I3D on Kinetics-400), from user-supplied weights.
- `clip_score` — CLIP text-video similarity with a pretrained open_clip model.
"""
