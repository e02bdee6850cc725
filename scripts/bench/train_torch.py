"""PyTorch baseline for `dfdet bench --train`: one LN-tuning optimizer step of the same encoder
(HF CLIPVisionModel, random weights, f32) as the reference trains it: LayerNorm weights and
biases + a LinearNorm head trainable, the rest frozen; slerp feature augmentation per class,
cross-entropy, backward, AdamW. Timed as dfdet does (median of N steps after one warm-up step),
peak RSS of the process.

Pinned: torch==2.6.0 transformers==4.50.0 (see scripts/fixtures/requirements.txt).
Usage: python scripts/bench/train_torch.py --batch 4 --iters 3 --threads 2 [--precision bf16-mixed]
`--precision bf16-mixed` runs the forward pass and the loss under torch.autocast to bfloat16, as
Lightning's `precision = "bf16-mixed"` does (the reference's training precision).
Prints one JSON row with the fields of dfdet's TrainBenchRow.
"""

import argparse
import json
import resource
import time

import torch
import torch.nn.functional as F
from transformers import CLIPVisionConfig, CLIPVisionModel

PRESETS = {
    "openai/clip-vit-large-patch14": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                          num_attention_heads=16, patch_size=14, image_size=224),
    "openai/clip-vit-base-patch16": dict(patch_size=16),
    "openai/clip-vit-base-patch32": dict(patch_size=32),
}
LN_TARGETS = ["pre_layrnorm", "layer_norm1", "layer_norm2", "post_layernorm"]


def peak_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def slerp(A, B, t):
    # src/model/dfdet.py `slerp`, restated.
    A = F.normalize(A, dim=-1)
    B = F.normalize(B, dim=-1)
    dot = torch.sum(A * B, dim=-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7)
    theta = torch.acos(dot)
    sin_theta = torch.sin(theta)
    t_theta = t * theta
    return torch.sin(theta - t_theta) / sin_theta * A + torch.sin(t_theta) / sin_theta * B


def slerp_augment(features, labels):
    # src/model/dfdet.py `slerp_feature_augmentation`, range [0, 1].
    for c in torch.unique(labels):
        mask = labels == c
        if mask.sum() < 2:
            continue
        feats = features[mask]
        idx = torch.randperm(len(feats))
        t = torch.rand((len(feats), 1), dtype=features.dtype)
        features[mask] = slerp(feats, feats[idx], t)
    return features


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="openai/clip-vit-large-patch14")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--precision", choices=["32", "bf16-mixed"], default="32")
    args = ap.parse_args()
    bf16 = args.precision == "bf16-mixed"
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = CLIPVisionConfig(**PRESETS[args.backbone], hidden_act="quick_gelu", attn_implementation="sdpa")
    model = CLIPVisionModel(cfg).train()
    head = torch.nn.Linear(cfg.hidden_size, 2)
    model.requires_grad_(False)
    for name, p in model.named_parameters():
        if any(t in name for t in LN_TARGETS):
            p.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    decay = [p for p in params if p.ndim == 2]
    no_decay = [p for p in params if p.ndim != 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.0}, {"params": no_decay, "weight_decay": 0.0}], lr=1e-4)
    x = torch.randn(args.batch, 3, cfg.image_size, cfg.image_size)
    labels = torch.arange(args.batch) % 2

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            pooled = model(pixel_values=x).pooler_output
            pooled = slerp_augment(pooled, labels)
            logits = head(F.normalize(pooled, p=2, dim=1))
            loss = F.cross_entropy(logits, labels)
        loss.backward()
        opt.step()

    step()
    times = []
    for _ in range(max(args.iters, 1)):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    times.sort()
    s = times[len(times) // 2]
    print(json.dumps({
        "backbone": args.backbone, "precision": args.precision, "batch": args.batch, "threads": torch.get_num_threads(),
        "trainable": sum(p.numel() for p in params), "s_per_step": s, "s_per_img": s / args.batch,
        "peak_rss_mib": peak_rss_mib(),
    }))


if __name__ == "__main__":
    main()
