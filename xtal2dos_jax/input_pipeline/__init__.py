"""Stage 1, crystals in, padded graph batches out: structure files and data-set readers,
featurisation into neighbour graphs (cached), label scalings, splits, fixed-budget jraph
batches. Imports only `core`."""
