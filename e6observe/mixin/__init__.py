"""The monitoring mixin as shipped in the wheel, for ``e6observe export``.

``config.py``, ``queries.py``, ``alerts.py`` and ``records.py`` (the recording rules the
dashboards read) are the rule generator (plain Python), the one
source of the selectors, thresholds, queries and alerts that ``dashboards/build.py`` also
builds the dashboards from. Under ``files/`` are byte-equal copies written by
``scripts/regen-dashboards``: the generated dashboards and rule file, the rule file's promtool
tests and ``docs/runbook.md`` / ``docs/alerts.md``. Edit the originals and regenerate; a test
fails when a copy drifts. (The dashboard builder itself needs grafana-foundation-sdk and stays
in ``dashboards/build.py``.)
"""
