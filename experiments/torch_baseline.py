"""PyTorch reference for `dr-jax bench --vs-torch`: the same CNN and optimizer, synthetic data.

Models: classic (RMSprop, as the blog post), strided (Adam, as the 15-CNN recipe) and residual
(Adam), each at the config's widths (`--widths`; `dr-jax bench --vs-torch` passes them with dr_jax's
parameter count, `--params`, which the PyTorch model must match).
Command: python experiments/torch_baseline.py --model classic --batch 86 --steps 40
         (needs: pip install torch)
Prints one JSON line: train_images_per_s and predict_images_per_s on this machine's CPU.
Not part of the package: torch is not a dr_jax dependency.
"""

import argparse
import json
import statistics
import time

import torch
from torch import nn


def classic_cnn(widths: tuple[int, ...] = (32, 64)) -> nn.Module:
  """Conv32-5x5 x2, pool, drop .25, Conv64-3x3 x2, pool, drop .25, Dense 256, drop .5, Dense 10."""
  a, b = widths
  return nn.Sequential(
      nn.Conv2d(1, a, 5, padding=2), nn.ReLU(), nn.Conv2d(a, a, 5, padding=2), nn.ReLU(),
      nn.MaxPool2d(2), nn.Dropout(0.25),
      nn.Conv2d(a, b, 3, padding=1), nn.ReLU(), nn.Conv2d(b, b, 3, padding=1), nn.ReLU(),
      nn.MaxPool2d(2), nn.Dropout(0.25), nn.Flatten(),
      nn.Linear(b * 7 * 7, 256), nn.ReLU(), nn.Dropout(0.5), nn.Linear(256, 10))


def strided_cnn(widths: tuple[int, ...] = (32, 64, 128)) -> nn.Module:
  """[Conv3x3 ×2, Conv5x5/2] ×2 (widths 1, 2; each conv + ReLU + batch-norm, dropout .4), Conv4x4
  (width 3)."""

  def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0):
    # Keras' BatchNormalization: momentum 0.99 (PyTorch counts 1 - that), epsilon 1e-3.
    return [nn.Conv2d(cin, cout, kernel, stride, padding), nn.ReLU(),
            nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01)]

  a, b, c = widths
  return nn.Sequential(
      *conv_bn(1, a, 3), *conv_bn(a, a, 3), *conv_bn(a, a, 5, 2, 2), nn.Dropout(0.4),
      *conv_bn(a, b, 3), *conv_bn(b, b, 3), *conv_bn(b, b, 5, 2, 2), nn.Dropout(0.4),
      *conv_bn(b, c, 4), nn.Flatten(), nn.Dropout(0.4), nn.Linear(c, 10))


class ResidualBlock(nn.Module):
  """x → relu(x + bn(conv(relu(bn(conv(x))))))."""

  def __init__(self, width: int):
    super().__init__()
    self.branch = nn.Sequential(
        nn.Conv2d(width, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width, eps=1e-3, momentum=0.01), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width, eps=1e-3, momentum=0.01))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return torch.relu(x + self.branch(x))


def residual_cnn(widths: tuple[int, ...] = (16, 32, 64)) -> nn.Module:
  """Per stage: Conv3x3 + batch-norm + ReLU and one residual block; pool between; mean; Dense."""
  layers: list[nn.Module] = []
  for i, width in enumerate(widths):
    if i:
      layers.append(nn.MaxPool2d(2))
    layers += [nn.Conv2d(widths[i - 1] if i else 1, width, 3, padding=1, bias=False),
               nn.BatchNorm2d(width, eps=1e-3, momentum=0.01), nn.ReLU(), ResidualBlock(width)]
  return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.25),
                       nn.Linear(widths[-1], 10))


# name → (model, dr_jax's parameter count at the default widths, optimizer)
MODELS = {
    # Keras' RMSprop: rho 0.9, epsilon 1e-7.
    "classic": (classic_cnn, 887_530,
                lambda params: torch.optim.RMSprop(params, lr=1e-3, alpha=0.9, eps=1e-7)),
    "strided": (strided_cnn, 326_410, lambda params: torch.optim.Adam(params, lr=1e-3)),
    "residual": (residual_cnn, 121_274, lambda params: torch.optim.Adam(params, lr=1e-3)),
}


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--model", choices=sorted(MODELS), default="classic")
  parser.add_argument("--batch", type=int, default=86)
  parser.add_argument("--steps", type=int, default=40)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--predict-images", type=int, default=28000)
  parser.add_argument("--widths", help="comma-separated layer widths, e.g. 32,64,128")
  parser.add_argument("--params", type=int, help="dr_jax's parameter count, to check against")
  args = parser.parse_args()
  torch.manual_seed(0)
  build, count, optimizer = MODELS[args.model]
  model = build(tuple(int(w) for w in args.widths.split(","))) if args.widths else build()
  count = args.params or count
  built = sum(p.numel() for p in model.parameters())
  if built != count:
    raise SystemExit(f"the PyTorch {args.model} CNN has {built:,} parameters, dr_jax's {count:,}")
  opt = optimizer(model.parameters())
  loss_fn = nn.CrossEntropyLoss()
  x = torch.rand(args.batch, 1, 28, 28)
  y = torch.randint(0, 10, (args.batch,))

  def train() -> None:
    model.train()
    for _ in range(args.steps):
      opt.zero_grad(set_to_none=True)
      loss_fn(model(x), y).backward()
      opt.step()

  test = torch.rand(args.predict_images, 1, 28, 28)

  @torch.inference_mode()
  def predict() -> None:
    model.eval()
    for chunk in test.split(1000):
      model(chunk).argmax(1)

  def timed(fn) -> float:
    fn()  # Warm-up.
    times = []
    for _ in range(args.repeats):
      start = time.perf_counter()
      fn()
      times.append(time.perf_counter() - start)
    return statistics.median(times)

  result = {"torch_version": torch.__version__, "threads": torch.get_num_threads(),
            "model": args.model,
            "train_images_per_s": args.steps * args.batch / timed(train),
            "predict_images_per_s": args.predict_images / timed(predict)}
  print(json.dumps(result))


if __name__ == "__main__":
  main()
