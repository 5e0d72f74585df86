"""scaffold-ledger: an append-only SQLite job ledger for generating ESL scaffolding dialogues."""

__version__ = "0.1.0"
