"""Peer loops run inside bench/.peers-venv, one process each: they share no code with the ledger.

Each script reads a job file (base URL, key, concurrency, model chain, rendered messages) and
prints one JSON line: wall and CPU seconds of the generation phase alone (imports and setup
excluded, as for the ledger), jobs done and errors.
"""
