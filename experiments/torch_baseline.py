"""PyTorch reference for `dr-jax bench --vs-torch`: the same classic CNN, RMSprop, synthetic data.

Command: python experiments/torch_baseline.py --batch 86 --steps 40   (needs: pip install torch)
Prints one JSON line: train_images_per_s and predict_images_per_s on this machine's CPU.
Not part of the package: torch is not a dr_jax dependency.
"""

import argparse
import json
import statistics
import time

import torch
from torch import nn


def classic_cnn() -> nn.Module:
  """Conv32-5x5 x2, pool, drop .25, Conv64-3x3 x2, pool, drop .25, Dense 256, drop .5, Dense 10."""
  return nn.Sequential(
      nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.Conv2d(32, 32, 5, padding=2), nn.ReLU(),
      nn.MaxPool2d(2), nn.Dropout(0.25),
      nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
      nn.MaxPool2d(2), nn.Dropout(0.25), nn.Flatten(),
      nn.Linear(64 * 7 * 7, 256), nn.ReLU(), nn.Dropout(0.5), nn.Linear(256, 10))


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--batch", type=int, default=86)
  parser.add_argument("--steps", type=int, default=40)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--predict-images", type=int, default=28000)
  args = parser.parse_args()
  torch.manual_seed(0)
  model = classic_cnn()
  assert sum(p.numel() for p in model.parameters()) == 887_530
  # Keras' RMSprop: rho 0.9, epsilon 1e-7.
  opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.9, eps=1e-7)
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
            "train_images_per_s": args.steps * args.batch / timed(train),
            "predict_images_per_s": args.predict_images / timed(predict)}
  print(json.dumps(result))


if __name__ == "__main__":
  main()
