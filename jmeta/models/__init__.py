"""Models: Flax NNX modules used as pure functions of their parameters."""

from jmeta.models._functional import Model as Model
from jmeta.models._functional import from_nnx as from_nnx
from jmeta.models._mlp import MLP as MLP
from jmeta.models._mlp import mlp as mlp
from jmeta.models._functional import with_compute_dtype as with_compute_dtype
from jmeta.models._conv4 import Conv4 as Conv4
from jmeta.models._conv4 import conv4 as conv4
