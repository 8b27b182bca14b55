"""The backbones and their weights: the backbone seam and the VGG nets as data (specs), the
dense VGG (vgg), any timm model (timm), weight sources and their preprocessing (weights), and
which library runs each layer fastest here (kernels)."""
