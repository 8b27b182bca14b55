"""Every choice and default of featx's configuration, once: the command line's choices and
defaults, the pipeline files' validation, the Python signatures and the validators all read
them from here. Standard library only, so `featx --help` stays light.

Where they are checked: once, in featx.config's DescriptorSpec and ProtocolSpec (nets and
scales through featx.net.specs' `get_spec` and `check_scales`).
"""

DEFAULT_NET = "D"  # any name featx.net.specs.get_spec takes (NET_CHOICES there says which)
# The scales Q a descriptor is computed at unless told otherwise (the paper's single-net
# VOC-2007 rows use 256, 384 and 512 among others).
DEFAULT_SCALES = (256, 384, 512)
AGGREGATIONS = ("mean", "stack", "max")  # across scales: featx.descriptors.fusion.AGGREGATORS
# The input conventions of weights (featx.net.weights.PREPROCESS holds what the first two are;
# "timm" is a timm model's own, from its pretrained_cfg: featx.net.timm)
PREPROCESS_NAMES = ("caffe", "torchvision", "timm")
# The types a net can run in (featx.extract.extractor maps them to torch's). float32 is the paper's; the
# others are faster where the hardware has them and get cache files of their own.
COMPUTE_TYPES = ("float32", "bfloat16", "float16")
DEFAULT_BATCH_SIZE = 8  # images per forward pass (each also mirrored)
ENGINES = ("local", "ray")  # featx.extract.update (this process) and featx.extract.distributed (a Ray cluster)
SETTINGS = ("image", "image+box")  # VOC-2012 action: the whole image, or stacked with the person box
SOLVERS = ("torch", "liblinear")  # featx.evaluate.classifiers.OneVsRestSVM
# C values searched on the validation data (the paper gives no grid)
DEFAULT_C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
