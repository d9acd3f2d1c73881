"""The flagship's training step in plain PyTorch, no Keras: what a CPU framework reaches on this net.

A reference point for the Keras rows of bench_train.py, not a training path: airbench94's layers
(2x2 whitening conv with a frozen kernel, three conv/pool/BN/ReLU groups 64/256/256, BN without
gamma, global max pool, bias-free linear, logits x 1/9), summed label-smoothed cross-entropy and
SGD-Nesterov 0.85, on random data after a warm-up step. ``channels_last`` is the memory format
oneDNN's CPU convolutions prefer.

    python benchmarks/train/torch_ceiling.py [--images 2048] [--batch 1024] [--format channels_last|nchw]

prints {"img_per_s": ...} as its last line.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--format", choices=("channels_last", "nchw"), default="channels_last")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    import torch
    from torch import nn

    if args.threads:
        torch.set_num_threads(args.threads)

    def group(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(cout, eps=1e-12, momentum=0.4),
                nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout, eps=1e-12, momentum=0.4),
                nn.ReLU()]

    whiten = nn.Conv2d(3, 24, 2)
    whiten.weight.requires_grad_(False)
    net = nn.Sequential(whiten, nn.ReLU(), *group(24, 64), *group(64, 256), *group(256, 256), nn.MaxPool2d(3),
                        nn.Flatten(), nn.Linear(256, 10, bias=False))
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.requires_grad_(False)  # gamma fixed at 1
    fmt = torch.channels_last if args.format == "channels_last" else torch.contiguous_format
    net = net.to(memory_format=fmt)
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=1.465e-3, momentum=0.85, nesterov=True)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (args.images, 3, 32, 32), generator=gen).float().div(255).to(memory_format=fmt)
    y = torch.randint(0, 10, (args.images,), generator=gen)

    def epoch(n: int) -> None:
        for i in range(0, n - args.batch + 1, args.batch):
            out = net(x[i:i + args.batch]) / 9
            loss = nn.functional.cross_entropy(out, y[i:i + args.batch], label_smoothing=0.2, reduction="sum")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    epoch(args.batch)  # warm-up: oneDNN primitive creation, allocation
    t0 = time.perf_counter()
    epoch(args.images)
    done = (args.images // args.batch) * args.batch
    print(json.dumps({"img_per_s": done / (time.perf_counter() - t0)}))


if __name__ == "__main__":
    main()
