"""Stage 3, what training minimises and reports: the losses on a DoS sequence (KL, WD,
MAE, MSE) and the split metrics of the paper (R^2, MAE, MSE, WD). Imports `core` and
`input_pipeline` (the output activation of each label scaling)."""
