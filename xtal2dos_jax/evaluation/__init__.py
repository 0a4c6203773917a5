"""Stage 6, how good a trained run is: `evaluate_run` (metrics, derived physics,
plots), the calibration of an ensemble's spread and the error bars it gives. Imports
the stages below it."""
