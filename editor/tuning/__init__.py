"""Searching an edit's parameters (``steerfold tune``): the space, the yardstick, the search and its front."""
