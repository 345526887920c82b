"""Task distributions, few-shot datasets, downloads and episode samplers."""

from jmeta.data._cache import cached_arrays as cached_arrays
from jmeta.data._dataset import ClassDataset as ClassDataset
from jmeta.data._dataset import cache_dir as cache_dir
from jmeta.data._dataset import data_dir as data_dir
from jmeta.data._download import DATASETS as DATASETS
from jmeta.data._download import DownloadError as DownloadError
from jmeta.data._download import download as download
from jmeta.data._download import verify as verify
from jmeta.data._loaders import load_cifar_fs as load_cifar_fs
from jmeta.data._loaders import load_fc100 as load_fc100
from jmeta.data._loaders import load_image_folder as load_image_folder
from jmeta.data._loaders import load_miniimagenet as load_miniimagenet
from jmeta.data._loaders import load_text_file as load_text_file
from jmeta.data._loaders import load_tieredimagenet as load_tieredimagenet
from jmeta.data._omniglot import load_omniglot as load_omniglot
from jmeta.data._omniglot import load_omniglot_characters as load_omniglot_characters
from jmeta.data._omniglot import maml_split as maml_split
from jmeta.data._omniglot import vinyals_split as vinyals_split
from jmeta.data._samplers import HostSampler as HostSampler
from jmeta.data._samplers import device_sampler as device_sampler
from jmeta.data._sinusoid import sinusoid_sampler as sinusoid_sampler
from jmeta.data._sinusoid import sinusoid_tasks as sinusoid_tasks
from jmeta.data._class_batches import class_batch_sampler as class_batch_sampler
