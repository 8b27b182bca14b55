"""What goes in: images read one way everywhere (images), the benchmarks and folders of images
(datasets), and featx demo's photographs (demo)."""
