"""Tests of the real released models' formats (ccfv.models.meshnet, ccfv.models.hippodeep). A package, so that
its conftest.py is imported as models.conftest and never shadows tests/conftest.py for ``from conftest import``."""
