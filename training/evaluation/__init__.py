"""Linear-probe evaluation of a run or a bundle against random weights and hand-made baselines."""
