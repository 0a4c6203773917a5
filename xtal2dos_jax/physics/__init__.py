"""Stage 2, physics derived from a DoS: heat capacity, entropy, free energy, mean
frequencies, Debye temperatures, band gap, and their errors between predicted and true
DoS. Pure numpy; imports only `core`."""
