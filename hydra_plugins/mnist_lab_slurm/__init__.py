"""mnist_lab's SLURM launcher for Hydra sweeps (conf/hydra/launcher/submitit_slurm.yaml)."""
