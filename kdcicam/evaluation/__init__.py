"""Evaluation: heatmaps to boxes, metrics and meters, the evaluator under both protocols, selection policies, baselines, saved-CAM scoring."""
