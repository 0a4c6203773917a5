"""Stage 5, training a model: the train state and optimizers, the pmapped steps, the
loop, checkpoints and the run directory, restoring a trained run, preemption, the
process runtime (CPU devices, compilation cache, malloc) and multi-host start-up.
Imports the stages below it."""
