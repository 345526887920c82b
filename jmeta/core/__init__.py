"""The functional core: types, the inner loop, task mapping and the meta-step."""

from jmeta.core._inner import InnerRule as InnerRule
from jmeta.core._inner import MAX_UNROLLED_STEPS as MAX_UNROLLED_STEPS
from jmeta.core._inner import default_inner_unroll as default_inner_unroll
from jmeta.core._inner import inner_loop as inner_loop
from jmeta.core._inner import support_minibatches as support_minibatches
from jmeta.core._inner import mse_loss as mse_loss
from jmeta.core._meta import TASK_MAPS as TASK_MAPS
from jmeta.core._meta import MetaLearner as MetaLearner
from jmeta.core._meta import default_task_map as default_task_map
from jmeta.core._meta import init_state as init_state
from jmeta.core._meta import make_meta_step as make_meta_step
from jmeta.core._meta import map_tasks as map_tasks
from jmeta.core._meta import meta_step_fn as meta_step_fn
from jmeta.core._meta import stack_episodes as stack_episodes
from jmeta.core._tree import combine as combine
from jmeta.core._tree import mask_by_path as mask_by_path
from jmeta.core._tree import partition as partition
from jmeta.core._types import Batch as Batch
from jmeta.core._types import Episode as Episode
from jmeta.core._types import MetaState as MetaState
from jmeta.core._types import TaskBatch as TaskBatch
from jmeta.core._types import num_tasks as num_tasks
from jmeta.core._losses import accuracy as accuracy
from jmeta.core._losses import cross_entropy_loss as cross_entropy_loss
