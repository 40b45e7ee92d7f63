"""fl-report: plots and a summary table from run folders' metrics.jsonl; a TensorBoard sink."""
