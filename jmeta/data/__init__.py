"""Task distributions and episode samplers."""

from jmeta.data._sinusoid import sinusoid_sampler as sinusoid_sampler
from jmeta.data._sinusoid import sinusoid_tasks as sinusoid_tasks
