"""Sweep analysis without torch: MLflow runs -> tidy tables (runs) -> frontier -> fits (fit) and
LR-transfer verdicts (transfer) -> figures -> HTML report (report.make_report); paper holds the
GAT paper's published scaling points. See docs/ANALYSIS.md."""
