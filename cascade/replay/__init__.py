"""Offline work on recorded answers and on the ledger: datasets importers (``importers``), the
replay benchmark (``bench``), text reports (``report``), ledger export (``export``) and plots."""
