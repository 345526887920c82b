"""Configs, the training loop, the meta-test protocol, run directories and checkpoints."""

from jmeta.core._registry import ConfigError as ConfigError
from jmeta.train._build import Setup as Setup
from jmeta.train._build import Task as Task
from jmeta.train._build import build as build
from jmeta.train._build import build_learner as build_learner
from jmeta.train._build import build_optimizer as build_optimizer
from jmeta.train._build import build_task as build_task
from jmeta.train._build import check_config as check_config
from jmeta.train._build import model_task as model_task
from jmeta.train._config import Config as Config
from jmeta.train._config import Section as Section
from jmeta.train._config import load_config as load_config
from jmeta.train._config import parse_overrides as parse_overrides
from jmeta.train._config import validate as validate
from jmeta.train._eval import adaptation_curves as adaptation_curves
from jmeta.train._eval import mean_ci95 as mean_ci95
from jmeta.train._eval import train_pretrained as train_pretrained
from jmeta.train._evaluation import evaluate as evaluate
from jmeta.train._reporting import format_table as format_table
from jmeta.train._reporting import paired_difference as paired_difference
from jmeta.train._rundir import RunDir as RunDir
from jmeta.train._rundir import environment as environment
from jmeta.train._rundir import git_commit as git_commit
from jmeta.train._training import NonFiniteLossError as NonFiniteLossError
from jmeta.train._training import train as train
