"""``python -m cdc_replicator`` runs the command line."""

from cdc_replicator.cli import main

if __name__ == "__main__":  # not when the replication reader process re-imports this module
    main()
