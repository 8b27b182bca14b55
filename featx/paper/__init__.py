"""The paper's experiments: pipeline files (pipeline), running them (reproduce) and the report
(report)."""
