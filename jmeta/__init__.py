"""jmeta: a JAX engine for meta-learning.

Every algorithm is a few pure functions over pytrees (see :class:`jmeta.core.MetaLearner`); the
inner loop is a ``lax.scan`` written for one task, mapped over the task axis in one place, and
the whole meta-step is one jitted function.
"""

from jmeta import algorithms as algorithms
from jmeta import core as core
from jmeta import data as data
from jmeta import distributed as distributed
from jmeta import inner as inner
from jmeta import models as models
from jmeta._api import load as load
from jmeta._compile_cache import enable_compile_cache as enable_compile_cache
from jmeta.core import Batch as Batch
from jmeta.core import Episode as Episode
from jmeta.core import MetaState as MetaState
from jmeta.core import init_state as init_state
from jmeta.core import make_meta_step as make_meta_step

__version__ = "0.1.0"
