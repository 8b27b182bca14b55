"""The paper's protocols on cached descriptors (experiment), linear SVMs (classifiers), metrics,
result files (results) and saved classifiers (model)."""
