"""PyTorch baseline for `dfdet bench`: the same encoder (HF CLIPVisionModel, random weights) +
a LinearNorm head, same batch sizes and dtypes, timed the same way (median of N passes after
one warm-up), peak RSS per setting.

Pinned: torch==2.6.0 transformers==4.50.0 (see scripts/fixtures/requirements.txt). The DINOv3
backbones (`--backbone facebook/dinov3-vitl16-pretrain-lvd1689m`: the encoder alone) and the
Perception Encoders (`--backbone vit_pe_core_large_patch14_336`: timm's model with its head
removed, at 224 pixels, as GenD runs it) need GenD's stack, scripts/fixtures/requirements-gend.txt.
Usage: python scripts/bench/bench_torch.py --batch 1,8 --dtype f32,bf16 --iters 3 --threads 2
Prints JSON rows with the fields of dfdet's BenchRow.

CLIP's bf16 is `--bf16 autocast` by default: the f32 model under torch.autocast to bfloat16, what
dfdet's `--dtype bf16` computes and how the reference evaluates (Lightning's bf16-mixed).
`--bf16 cast` times the model cast to bfloat16 (`model.to(torch.bfloat16)`) instead.
"""

import argparse
import json
import resource
import time

import torch
import torch.nn.functional as F
import transformers
from transformers import CLIPVisionConfig, CLIPVisionModel

PRESETS = {
    "openai/clip-vit-large-patch14": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                          num_attention_heads=16, patch_size=14, image_size=224),
    "openai/clip-vit-base-patch16": dict(patch_size=16),
    "openai/clip-vit-base-patch32": dict(patch_size=32),
}


DINOV3 = {
    "facebook/dinov3-vitl16-pretrain-lvd1689m": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                                     num_attention_heads=16, num_register_tokens=4),
    "facebook/dinov3-vitb16-pretrain-lvd1689m": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                                     num_attention_heads=12, num_register_tokens=4),
}


def dinov3(args):
    """The DINOv3 encoder alone (random weights) to `pooler_output`; bf16 under autocast, as
    GenD evaluates (and as dfdet's bf16 computes)."""
    cfg = transformers.DINOv3ViTConfig(**DINOV3[args.backbone], attn_implementation="sdpa")
    model = transformers.DINOv3ViTModel(cfg).eval()
    return timed(args, model, lambda m, x: m(x).pooler_output, cfg.image_size)


PE = ["vit_pe_core_base_patch16_224", "vit_pe_core_large_patch14_336", "vit_pe_core_gigantic_patch14_448"]


def pe(args):
    """The Perception Encoder (timm, random weights) as GenD builds it (head removed, dynamic
    image size) at GenD's 224 pixels, to its feature; bf16 under autocast."""
    import timm

    model = timm.create_model(args.backbone, pretrained=False, dynamic_img_size=True).eval()
    model.head = torch.nn.Identity()
    return timed(args, model, lambda m, x: m(x), 224)


def timed(args, model, forward, side):
    """Median seconds per image of `forward(model, x)` for every --dtype (f32, or bf16 under
    autocast) and --batch."""
    rows = []
    for dtype in args.dtype.split(","):
        reset_peak_rss()
        for b in [int(x) for x in args.batch.split(",")]:
            x = torch.randn(b, 3, side, side)
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
                forward(model, x)
                times = []
                for _ in range(max(args.iters, 1)):
                    t = time.perf_counter()
                    forward(model, x)
                    times.append(time.perf_counter() - t)
            times.sort()
            s = times[len(times) // 2] / b
            rows.append(dict(backbone=args.backbone, dtype=dtype, batch=b, threads=torch.get_num_threads(),
                             s_per_img=s, img_per_s=1 / s, peak_rss_mib=peak_rss_mib()))
    return rows


def reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="openai/clip-vit-large-patch14")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--dtype", default="f32,bf16")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--bf16", choices=["autocast", "cast"], default="autocast",
                    help="CLIP's bf16: the f32 model under autocast (as dfdet), or the model cast to bfloat16")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.backbone in DINOV3:
        print(json.dumps(dinov3(args), indent=2))
        return
    if args.backbone in PE:
        print(json.dumps(pe(args), indent=2))
        return
    cfg = CLIPVisionConfig(**PRESETS[args.backbone], attn_implementation="sdpa")
    rows = []
    for dtype_name in args.dtype.split(","):
        autocast = dtype_name == "bf16" and args.bf16 == "autocast"
        dtype = torch.bfloat16 if dtype_name == "bf16" and not autocast else torch.float32
        reset_peak_rss()
        model = CLIPVisionModel(cfg).eval().to(dtype)
        head = torch.nn.Linear(cfg.hidden_size, 2).to(dtype)
        for b in [int(x) for x in args.batch.split(",")]:
            x = torch.randn(b, 3, cfg.image_size, cfg.image_size)
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                def run():
                    f = model(x.to(dtype)).pooler_output
                    return head(F.normalize(f, dim=1)).float().softmax(1)
                run()
                times = []
                for _ in range(max(args.iters, 1)):
                    t = time.perf_counter()
                    run()
                    times.append(time.perf_counter() - t)
            times.sort()
            s = times[len(times) // 2] / b
            rows.append(dict(backbone=args.backbone, dtype=dtype_name, batch=b, threads=torch.get_num_threads(),
                             s_per_img=s, img_per_s=1 / s, peak_rss_mib=peak_rss_mib()))
        del model
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
