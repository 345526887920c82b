"""Models: Flax NNX modules used as pure functions of their parameters."""

from jmeta.models._functional import Model as Model
from jmeta.models._functional import from_nnx as from_nnx
from jmeta.models._mlp import MLP as MLP
from jmeta.models._mlp import mlp as mlp
from jmeta.models._functional import with_compute_dtype as with_compute_dtype
from jmeta.models._conv4 import Conv4 as Conv4
from jmeta.models._conv4 import conv4 as conv4
from jmeta.models._functional import BN_MODES as BN_MODES
from jmeta.models._functional import max_pool_2x2 as max_pool_2x2
from jmeta.models._resnet12 import ResNet12 as ResNet12
from jmeta.models._resnet12 import resnet12 as resnet12
from jmeta.models._batchnorm import batch_stat_mask as batch_stat_mask
from jmeta.models._batchnorm import estimate_batch_stats as estimate_batch_stats
from jmeta.models._batchnorm import eval_apply_of as eval_apply_of
from jmeta.models._conv import CONV_IMPLS as CONV_IMPLS
from jmeta.models._conv import default_conv_impl as default_conv_impl
from jmeta.models._conv import im2col_conv as im2col_conv
from jmeta.models._conv import resolve_conv_impl as resolve_conv_impl
