"""Datasets: the embedded synthetic set (`synthetic`), readers for the official layouts (`readers`,
`prepare`, `manifest`), images to tensors (`dataset`, `transforms`, `device_augment`), the splits a
training run reads (`training_sets`) and the export's held-out image sets (`heldout`)."""
