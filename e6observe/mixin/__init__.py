"""The monitoring mixin as shipped in the wheel, for ``e6observe export``.

Every file here except this one is a byte-equal copy written by ``scripts/regen-dashboards``:
``config.py``, ``queries.py`` and ``alerts.py`` from ``dashboards/`` (the rule generator, plain
Python), and under ``files/`` the generated dashboards and rule file, the rule file's promtool
tests and ``docs/runbook.md`` / ``docs/alerts.md``. Edit the originals and regenerate; a test
fails when a copy drifts. (The dashboard builder itself needs grafana-foundation-sdk and stays
in ``dashboards/build.py``.)
"""
