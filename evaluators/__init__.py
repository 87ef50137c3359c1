"""The built-in evaluators.

They are registered in the ``cascade.evaluators`` entry-point group by this distribution's
``pyproject.toml``, the same way a third-party plug-in registers its own.
"""
