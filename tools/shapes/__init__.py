"""Train, export and evaluate Loom's embedded default model: a tiny text-to-image
pipeline (plus an edge ControlNet) learned from procedurally drawn shapes."""
