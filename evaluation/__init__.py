"""Evaluation: Frechet distances (FVD, FID), feature networks, the harness and reports."""
