"""Meta-learning algorithms, each a small factory returning a :class:`jmeta.core.MetaLearner`,
registered for configs by name (``learner=dict(name=...)``; :func:`register` adds one)."""

from jmeta.algorithms._registry import ALGORITHMS as ALGORITHMS
from jmeta.algorithms._registry import register as register
from jmeta.algorithms._gradient import anil as anil
from jmeta.algorithms._gradient import boil as boil
from jmeta.algorithms._gradient import fomaml as fomaml
from jmeta.algorithms._gradient import gradient_learner as gradient_learner
from jmeta.algorithms._gradient import maml as maml
from jmeta.algorithms._gradient import metasgd as metasgd
from jmeta.algorithms._mamlpp import mamlpp as mamlpp
from jmeta.algorithms._mamlpp import msl_weights as msl_weights
from jmeta.algorithms._mamlpp import per_step_batch_stats as per_step_batch_stats
from jmeta.algorithms._reptile import reptile as reptile
from jmeta.algorithms._protonets import protonets as protonets
from jmeta.algorithms._metaicl import metaicl as metaicl
from jmeta.algorithms._protomaml import prototype_head as prototype_head
from jmeta.algorithms._protomaml import protomaml as protomaml
from jmeta.algorithms._cavia import cavia as cavia
from jmeta.algorithms._imaml import imaml as imaml
from jmeta.algorithms._matching import matching_networks as matching_networks
from jmeta.algorithms._r2d2 import r2d2 as r2d2
from jmeta.algorithms._imaml import implicit_meta_gradient as implicit_meta_gradient
from jmeta.algorithms._transfer import default_cosine_scale as default_cosine_scale
from jmeta.algorithms._transfer import transfer_baseline as transfer_baseline
