"""Providers wrap one SDK each and turn its faults into ``ProviderError``."""
