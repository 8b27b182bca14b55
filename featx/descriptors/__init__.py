"""Descriptors combined, for Python and other tools: aggregation across scales and fusion of
nets (fusion), the descriptor of a list of images (descriptor), its scikit-learn face
(transform), and Parquet / NumPy export (export)."""
