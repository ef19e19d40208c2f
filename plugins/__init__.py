"""One sub-package per paper of the reading list. See ``declab list`` for the catalog."""
