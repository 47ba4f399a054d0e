"""The ``prefroute`` command line."""
