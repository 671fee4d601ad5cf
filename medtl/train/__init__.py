"""Training: imbalance-aware losses and samplers, the fit loop, thresholds, and the train entry point."""
