"""Meta-learning algorithms, each a small factory returning a :class:`jmeta.core.MetaLearner`."""

from jmeta.algorithms._gradient import anil as anil
from jmeta.algorithms._gradient import fomaml as fomaml
from jmeta.algorithms._gradient import gradient_learner as gradient_learner
from jmeta.algorithms._gradient import maml as maml
from jmeta.algorithms._gradient import metasgd as metasgd
from jmeta.algorithms._reptile import reptile as reptile
from jmeta.algorithms._protonets import protonets as protonets
