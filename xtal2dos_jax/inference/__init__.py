"""Stage 7, predictions for new structures: `Predictor` (a workdir or an exported
model), exported and shipped models, the output files. Imports the stages below it."""
