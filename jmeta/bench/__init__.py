"""``jmeta bench [SUITE]``: compile time, throughput, FLOPs and memory of the meta-step.

The workloads are the entries of ``jmeta/bench_workloads.json`` (shared with the PyTorch peers in
``benchmarks/peers/``). Each workload runs in its own process (so its peak memory is its own) on
a fixed synthetic task batch of the workload's shapes: no dataset, no sampler, the same batch
passed to the jitted meta-step every iteration. Per workload we record:

* ``compile_s``: wall time of ``jit(step).lower(state, batch).compile()``;
* ``flops_per_step``: the matrix-multiply and convolution FLOPs of one step, counted on its
  jaxpr with every ``lax.scan`` / ``lax.map`` loop multiplied by its length
  (:func:`jaxpr_flops`); XLA's own cost analysis, which counts a loop's body once, is kept as
  ``xla_cost_flops``;
* steady-state meta-steps per second: after a warm-up call, ``reps`` repetitions, each running
  enough steps to last at least ``min_rep_s`` (waited on with ``block_until_ready``); the median
  and the min..max spread; tasks per second = steps per second x meta-batch;
* peak host RSS of the process and, where the backend reports it, peak device memory.

Suites: ``core`` (every workload), ``quick`` (two small workloads, fewer repetitions: smoke tests),
``scaling`` (curves over meta-batch, inner steps with and without remat, ways and shots, as
variants of the base workloads named ``base@key=value,...``).

Results: ``benchmarks/results/<hardware>/bench-<suite>.json`` and ``.md`` (and PNG curves for
``scaling``), or under ``--out DIR``.

Example (from the repository root; each run starts its own processes):
  >>> from jmeta.bench import workload_names
  >>> workload_names("quick")
  ['maml_sinusoid', 'protonets_omniglot_5w1s']
"""

from jmeta.bench._flops import cost_flops as cost_flops
from jmeta.bench._flops import has_loops as has_loops
from jmeta.bench._flops import jaxpr_flops as jaxpr_flops
from jmeta.bench._main import main as main
from jmeta.bench._measure import build_workload as build_workload
from jmeta.bench._measure import cpu_model as cpu_model
from jmeta.bench._measure import hardware_name as hardware_name
from jmeta.bench._measure import machine_info as machine_info
from jmeta.bench._measure import matmul_peak_flops as matmul_peak_flops
from jmeta.bench._measure import peak_device_bytes as peak_device_bytes
from jmeta.bench._measure import peak_host_rss_mb as peak_host_rss_mb
from jmeta.bench._measure import run_workload as run_workload
from jmeta.bench._measure import synthetic_batch as synthetic_batch
from jmeta.bench._measure import thread_settings as thread_settings
from jmeta.bench._suite import markdown_table as markdown_table
from jmeta.bench._suite import plot_scaling as plot_scaling
from jmeta.bench._suite import run_suite as run_suite
from jmeta.bench._workloads import QUICK as QUICK
from jmeta.bench._workloads import SPEC_KEYS as SPEC_KEYS
from jmeta.bench._workloads import SUITES as SUITES
from jmeta.bench._workloads import WORKLOADS_FILE as WORKLOADS_FILE
from jmeta.bench._workloads import load_workloads as load_workloads
from jmeta.bench._workloads import parse_name as parse_name
from jmeta.bench._workloads import query_size as query_size
from jmeta.bench._workloads import scaling_workloads as scaling_workloads
from jmeta.bench._workloads import select as select
from jmeta.bench._workloads import split_names as split_names
from jmeta.bench._workloads import variant_spec as variant_spec
from jmeta.bench._workloads import workload_config as workload_config
from jmeta.bench._workloads import workload_names as workload_names
