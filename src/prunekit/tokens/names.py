"""The token methods' names, importable without torch (the CLI's choices, ``eval --token-prune``)."""

SHORTEN = ("fastv", "recoverable", "random", "vflowopt", "coarse-to-fine")  # remove positions from layer K on (``methods.METHODS``)
ROUTE = ("ftp", "random-route", "block-skip", "attn-drop")  # let tokens skip blocks; every position keeps its logits
