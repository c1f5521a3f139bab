"""A Hydra sweeper that runs an Optuna study: `hydra/sweeper=mnist_lab_optuna` (see conf/hparams_search/)."""
