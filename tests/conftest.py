"""Shared pytest configuration for the whole suite.

Settings live in pyproject.toml ([tool.pytest.ini_options]): asyncio_mode=auto, a 120 s
timeout per test, the ``slow`` and ``integration`` markers, and ``--import-mode=importlib``
(test folders have no ``__init__.py``; shared helpers go in conftest.py files as fixtures).
"""
