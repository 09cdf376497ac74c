"""Datasets: the embedded synthetic set, readers for the official layouts, transforms."""
