"""Storage engines and their contract (see ``shale.engines.base``)."""
