"""``python -m cdc_replicator`` runs the command line."""

from cdc_replicator.cli import main

main()
