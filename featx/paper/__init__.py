"""The paper's experiments: pipeline files (pipeline), running them (reproduce), the report
(report) and the cost model (cost)."""
