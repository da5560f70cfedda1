"""What users run on trained runs: evaluate, predict, misclassified, the ablation runner."""
