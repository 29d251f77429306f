"""Cost of one ensemble sampling step per strategy, relative to one expert, measured in one run.

K random-init experts of a preset plus the run's router (the light one, routing in its default mode,
printed as `router_mode`; weights do not change the cost), a batch of videos, and classifier-free guidance: we time
`ensemble_velocity` for top1, top2 and full, against one expert's guided velocity alone and the router
alone, interleaved over several rounds (median); `top1 full-size router` is the same with Paris' router,
which is the experts' own backbone. FLOPs per step (torch's flop counter) are printed beside the times.
Targets: top1 ≤ 1.15 × one expert; full ≈ K × one expert.

Peak device memory with and without offload: measured with torch.cuda.max_memory_allocated on a GPU; on a
CPU (where "device" and "host" are the same memory) the script reports the expert weights that would be
resident on the device — K experts without offload, the most experts one step selected with it.

    python benchmarks/sampling_cost.py [--preset tiny|small] [--experts 4] [--videos 1] [--rounds 5] [--gpu N|cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from expert.backbone import build_backbone, build_codec
from expert.device import resolve_device
from expert.pipeline import ensemble_velocity
from expert.presets import get_preset
from expert.router import Router
from expert.router_preset import router_preset
from expert.routing import parse_strategy
from expert.sampling import velocity


def _time(fn, reps: int) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--experts", type=int, default=4)
    ap.add_argument("--videos", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--gpu", default="cpu")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    device = resolve_device(args.gpu)
    preset = get_preset(args.preset)
    k = args.experts
    text_dim = 64
    experts = [build_backbone(preset.backbone, text_dim, seed=i).eval().requires_grad_(False).to(device)
               for i in range(k)]
    rp = router_preset(preset, k, data_sizes=[1] * k)
    router = Router(rp.backbone, rp.router, text_dim).eval().requires_grad_(False).to(device)
    fp = router_preset(preset, k, use_text=False, light=False, caption_prior=False, uniform_t=False)
    full_router = Router(fp.backbone, fp.router, text_dim).eval().requires_grad_(False).to(device)
    shape = build_codec(preset.backbone).latent_shape()
    x = torch.randn(args.videos, *shape, device=device)
    cond = torch.randn(args.videos, 32, text_dim, device=device)
    null = torch.zeros_like(cond)
    t = torch.tensor(500.0, device=device)
    g = torch.Generator().manual_seed(0)
    cases = {
        "one expert": lambda: velocity(experts[0], x, t, cond, null, 4.0),
        "router": lambda: router.posterior(x, t.expand(x.shape[0]), cond, null),
        **{s: (lambda s=s: ensemble_velocity(experts, router, x, t, cond, null, parse_strategy(s),
                                             guidance=4.0, generator=g)) for s in ("top1", "top2", "full")},
        "top1 full-size router": lambda: ensemble_velocity(experts, full_router, x, t, cond, null,
                                                           parse_strategy("top1"), guidance=4.0, generator=g),
    }
    from torch.utils.flop_counter import FlopCounterMode

    flops = {}
    with torch.no_grad():
        for name, fn in cases.items():
            with FlopCounterMode(display=False) as counter:
                fn()
            flops[name] = counter.get_total_flops()
    times: dict[str, list[float]] = {name: [] for name in cases}
    with torch.no_grad():
        for fn in cases.values():
            fn()  # warm-up
        for _ in range(args.rounds):
            for name, fn in cases.items():
                times[name].append(_time(fn, args.reps))
    med = {name: statistics.median(v) for name, v in times.items()}
    one = med["one expert"]
    rows = {name: {"seconds_per_step": round(v, 5), "x_one_expert": round(v / one, 3),
                   "flops_x_one_expert": round(flops[name] / flops["one expert"], 4)} for name, v in med.items()}
    rows["top1"]["x_one_expert_plus_router"] = round(med["top1"] / (one + med["router"]), 3)
    rows["full"]["x_k_experts"] = round(med["full"] / (k * one), 3)

    expert_bytes = sum(p.numel() * p.element_size() for p in experts[0].parameters())
    router_bytes = sum(p.numel() * p.element_size() for p in router.parameters())
    memory = {"expert_weight_mib": round(expert_bytes / 2**20, 2)}
    if device.type == "cuda":
        for offload in (False, True):
            for e in experts:
                e.to("cpu" if offload else device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            with torch.no_grad():
                ensemble_velocity(experts, router, x, t, cond, null, parse_strategy("top1"), guidance=4.0,
                                  generator=g, offload_to=torch.device("cpu") if offload else None)
            memory[f"peak_mib_top1_{'offload' if offload else 'resident'}"] = round(
                torch.cuda.max_memory_allocated(device) / 2**20, 2)
        memory["measured"] = "torch.cuda.max_memory_allocated"
    else:
        with torch.no_grad():
            _, _, w = ensemble_velocity(experts, router, x, t, cond, null, parse_strategy("top1"), guidance=4.0,
                                        generator=g)
        selected = int((w.sum(0) > 0).sum())
        memory["weights_on_device_mib_resident"] = round((k * expert_bytes + router_bytes) / 2**20, 2)
        memory["weights_on_device_mib_offload_top1"] = round((selected * expert_bytes + router_bytes) / 2**20, 2)
        memory["measured"] = "CPU run: weight bytes resident on the execution device, by accounting"
    result = {"preset": args.preset, "experts": k, "router": rp.name, "router_mode": rp.router.default_mode,
              "videos": args.videos, "device": str(device),
              "threads": torch.get_num_threads(), "steps": rows, "memory": memory}
    if args.json:
        print(json.dumps(result))
        return
    print(f"{args.preset}, K={k}, {args.videos} video(s), guidance on, device {device}")
    for name, r in rows.items():
        extra = {kk: vv for kk, vv in r.items() if kk not in ("seconds_per_step", "x_one_expert")}
        print(f"  {name:21} {r['seconds_per_step'] * 1000:9.1f} ms/step  {r['x_one_expert']:6.2f}× one expert  {extra}")
    print(f"  memory: {memory}")


if __name__ == "__main__":
    main()
