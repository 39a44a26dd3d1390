"""ImageNet colour statistics: the one home of the normalisation the backbone was trained with.

Images are fed to the network as ``(x - IMAGENET_MEAN) / IMAGENET_STD`` per RGB channel, with
``x`` in [0, 1] (:func:`utils.datasets.preprocess.normalize_imagenet`); the plots undo it
(:func:`utils.common.plotting.to_numpy_image`).
"""

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
