"""Offline work: fitting thresholds and policies to a quality target on recorded answers.

``calibrate`` is the entry (``cascade calibrate``); ``threshold_search`` and ``policy`` search,
``guarantee`` certifies, ``simulation`` replays a ladder over recorded answers without calls,
``calibrated_file`` writes the result. Nothing that runs per request imports this package.
"""
