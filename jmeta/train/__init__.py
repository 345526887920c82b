"""Training loop, meta-test protocol, configs and checkpoints."""

from jmeta.train._config import Config as Config
from jmeta.train._config import ConfigError as ConfigError
from jmeta.train._config import load_config as load_config
from jmeta.train._config import parse_overrides as parse_overrides
from jmeta.train._eval import adaptation_curves as adaptation_curves
from jmeta.train._eval import mean_ci95 as mean_ci95
from jmeta.train._eval import train_pretrained as train_pretrained
from jmeta.train._loop import NonFiniteLossError as NonFiniteLossError
from jmeta.train._loop import evaluate as evaluate
from jmeta.train._loop import format_table as format_table
from jmeta.train._loop import paired_difference as paired_difference
from jmeta.train._loop import train as train
