"""Data parallelism with JAX's own sharding: a 1-D device mesh, batch split along `data`."""

from __future__ import annotations

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from dr_jax.errors import UserError


def data_mesh(batch_size: int) -> Mesh:
  """A mesh over every device (all hosts); the global batch must split evenly across it."""
  devices = jax.devices()
  if batch_size % len(devices):
    raise UserError(f"batch_size={batch_size} does not divide across {len(devices)} devices; "
                    f"use a multiple of {len(devices)}, e.g. "
                    f"--config.batch_size={max(1, batch_size // len(devices)) * len(devices)}")
  # Auto axes: XLA propagates the batch sharding through the step (no per-op annotations).
  return jax.make_mesh((len(devices),), ("data",), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array (parameters, optimizer state, the dataset)."""
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """`(members, steps, batch)` indices with the batch axis split across devices."""
  return NamedSharding(mesh, P(None, None, "data"))


def stacked_batches(mesh: Mesh) -> NamedSharding:
  """`(batches, batch, ...)` images (prediction) with the batch axis split across devices."""
  return NamedSharding(mesh, P(None, "data"))


def put(tree, sharding: NamedSharding):
  """`jax.device_put`, through host memory when the mesh spans processes.

  device_put cannot spread an array held by one process over other processes' devices; from
  host memory, each process places its own part of the same value.
  """
  if jax.process_count() > 1:
    tree = jax.device_get(tree)
  return jax.device_put(tree, sharding)


def describe(mesh: Mesh) -> str:
  """'4 devices (cpu)', the way the first log line states the mesh ('... over 2 processes')."""
  n, hosts = mesh.devices.size, jax.process_count()
  return (f"{n} device{'s' if n > 1 else ''} ({mesh.devices.flat[0].platform})"
          + (f" over {hosts} processes" if hosts > 1 else ""))
