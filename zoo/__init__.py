"""The Hub model zoo: a local Hub server, a crawler into the ``db`` store, fingerprints and scores."""
