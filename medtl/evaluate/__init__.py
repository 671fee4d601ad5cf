"""Evaluation: pure metric functions (outcome, calibration, segmentation), bootstrap CIs, temperature
scaling, plots and reports."""
