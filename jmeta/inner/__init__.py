"""Inner update rules, optax-shaped, with learnable pieces; ``register`` adds one to configs."""

from jmeta.core._inner import InnerRule as InnerRule
from jmeta.inner._lstm import frozen_rule as frozen_rule
from jmeta.inner._lstm import lstm_cell as lstm_cell
from jmeta.inner._lstm import lstm_init as lstm_init
from jmeta.inner._lstm import lstm_optimizer as lstm_optimizer
from jmeta.inner._lstm import meta_lstm as meta_lstm
from jmeta.inner._lstm import preprocess_gradients as preprocess_gradients
from jmeta.inner._registry import RULES as RULES
from jmeta.inner._registry import register as register
from jmeta.inner._rules import from_optax as from_optax
from jmeta.inner._rules import lslr as lslr
from jmeta.inner._rules import meta_sgd as meta_sgd
from jmeta.inner._rules import momentum_sgd as momentum_sgd
from jmeta.inner._rules import sgd as sgd
