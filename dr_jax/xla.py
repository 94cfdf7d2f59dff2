"""XLA settings: the compiler options of the CPU fast path, and the persistent compilation cache."""

from __future__ import annotations

import functools
import hashlib
import os
import pathlib
import platform
import re
import sys

import jax
import jax.numpy as jnp

from dr_jax.errors import UserError

# XLA:CPU's experimental YNNPACK library fusions are on by default, and its convolutions ran
# this project's at half the speed of XLA's Eigen path, or (the strided model's 3×3 32→32 layer,
# in inference) at a tenth. Turning them all off (an empty list) made the classic CNN's inference
# slower, though: 3,800 images/s against 7,200 with only the reduce fusions enabled (only dot or
# only elementwise fusions gave the same 7,200; the cause is not pinned down). Measured by timing
# both models' inference and gradient under each setting; training is no slower with this one.
FAST_CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}

# x86 vector instruction sets XLA:CPU can be limited to (--xla_cpu_max_isa), narrowest first,
# with the /proc/cpuinfo flag that says the CPU has each.
ISA_FLAGS = {"SSE4_2": "sse4_2", "AVX": "avx", "AVX2": "avx2", "AVX512": "avx512f"}
# The same limits for PyTorch's kernels (ATen) and oneDNN, so both sides of `bench --vs-torch`
# run on the same instruction set.
TORCH_ISA_ENV = {"SSE4_2": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"},
                 "AVX": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "AVX"},
                 "AVX2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
                 "AVX512": {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}}

# DR_JAX_COMPILATION_CACHE: unset → the user's cache directory; a path → there; off → no cache.
CACHE_ENV = "DR_JAX_COMPILATION_CACHE"
_OFF = ("0", "off", "false", "no", "none")


@functools.cache
def supported(options: tuple[tuple[str, str], ...]) -> bool:
  """Whether this jaxlib's XLA accepts `options`; says once on stderr when it does not.

  An option another jaxlib renamed or dropped fails every compile ("No such compile option"),
  so a trivial program is compiled with the options first.
  """
  try:
    jax.jit(jnp.negative).lower(jnp.zeros(1)).compile(compiler_options=dict(options))
  except jax.errors.JaxRuntimeError as e:
    reason = str(e).strip().splitlines()[0]
    print(f"dr-jax: this jaxlib ({jax.__version__}) does not accept the CPU fast path's XLA "
          f"options ({reason}); compiling with XLA's defaults instead", file=sys.stderr)
    return False
  return True


def compiler_options(fast_cpu: bool) -> dict[str, str] | None:
  """Per-function compiler options for every jitted program (train, eval, predict).

  None off CPU, when disabled, or when this jaxlib does not know them: then XLA compiles with its
  defaults.
  """
  if fast_cpu and jax.default_backend() == "cpu" and supported(tuple(FAST_CPU_OPTIONS.items())):
    return dict(FAST_CPU_OPTIONS)
  return None


def _cpu_flags() -> str:
  """The CPU's feature line of /proc/cpuinfo (x86 `flags`, ARM `Features`), or ""."""
  cpuinfo = pathlib.Path("/proc/cpuinfo")
  if not cpuinfo.is_file():
    return ""
  return next((line for line in cpuinfo.read_text(errors="replace").splitlines()
               if line.startswith(("flags", "Features"))), "")


def cpu_isa(flags: str | None = None) -> str:
  """The widest of ISA_FLAGS the CPU has (`flags`: a cpuinfo line), else the machine's name."""
  words = set((_cpu_flags() if flags is None else flags).split())
  found = [isa for isa, flag in ISA_FLAGS.items() if flag in words]
  return found[-1] if found else platform.machine()


def isa_limit() -> str | None:
  """The --xla_cpu_max_isa in XLA_FLAGS, upper-cased, or None."""
  match = re.search(r"--xla_cpu_max_isa=(\S+)", os.environ.get("XLA_FLAGS", ""))
  return match.group(1).upper() if match else None


def describe_isa() -> str:
  """The instruction set XLA:CPU compiles for, and why: "AVX512", or "AVX2 (limited by
  XLA_FLAGS; the CPU has AVX512)"."""
  cpu, limit = cpu_isa(), isa_limit()
  if limit is None or limit == cpu:
    return cpu
  return f"{limit} (limited by XLA_FLAGS; the CPU has {cpu})"


def limit_isa(isa: str) -> None:
  """Limits XLA:CPU to `isa` (one of ISA_FLAGS) for this process: call before JAX runs
  anything, since XLA reads XLA_FLAGS once, when its CPU client starts."""
  isa = isa.upper()
  if isa not in ISA_FLAGS:
    raise UserError(f"--isa {isa}: choose one of {', '.join(ISA_FLAGS)}")
  flags = re.sub(r"\s*--xla_cpu_max_isa=\S+", "", os.environ.get("XLA_FLAGS", ""))
  os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_max_isa={isa}".strip()


def _host_tag() -> str:
  """A short name for this CPU's instruction set (and an XLA_FLAGS limit), so a shared home never
  loads code built for another CPU (an AVX-512 program on an AVX2 machine would die on an
  illegal instruction) or for another limit."""
  limit = isa_limit()
  return (f"{platform.machine()}-{hashlib.sha256(_cpu_flags().encode()).hexdigest()[:10]}"
          + (f"-{limit.lower()}" if limit else ""))


def cache_dir() -> pathlib.Path | None:
  """Where compiled programs are kept between commands, or None when the cache is off."""
  setting = os.environ.get(CACHE_ENV, "").strip()
  if setting.lower() in _OFF:
    return None
  if setting:
    return pathlib.Path(setting).expanduser()
  root = pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache")
  return root / "dr_jax" / "jax" / _host_tag()


def use_compilation_cache() -> pathlib.Path | None:
  """Turns on JAX's persistent compilation cache (see `cache_dir`), so a second command of the
  same config loads its programs instead of compiling them; a cache already set is kept."""
  configured = getattr(jax.config, "jax_compilation_cache_dir", None)
  if configured:  # JAX_COMPILATION_CACHE_DIR, or the caller's own choice.
    return pathlib.Path(configured)
  path = cache_dir()
  if path is None:
    return None
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError:
    return None  # A read-only home: compile every time rather than fail.
  jax.config.update("jax_compilation_cache_dir", str(path))
  # Predict and eval programs compile in about a second; JAX's default skips those under 1 s.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
  return path
