"""Training: the loop on Lightning Fabric (``engine``), what it trains (``task``, ``tasks``), the batch order and
schedules (``schedule``), the stages a user runs (``stages``: ``train_vqvae``, ``train_prior``) and resuming
them with the run's own config (``resume``)."""
