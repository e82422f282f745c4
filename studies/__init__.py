"""One module per study: a frozen Config, run(cfg) -> Result and a few-line main."""
