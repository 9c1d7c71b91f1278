"""e6observe's monitoring mixin: Grafana dashboards and Prometheus alert rules as code.

``config.py`` holds every selector, threshold and window; ``queries.py`` the PromQL;
``alerts.py`` the alert rules; ``build.py`` the dashboards (grafana-foundation-sdk) and the
writer that keeps ``json/``, ``rules/`` and the Helm chart's copies in sync
(``scripts/regen-dashboards``). Only ``build.py`` needs the SDK; the rest is plain Python.
"""
