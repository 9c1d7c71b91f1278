"""The HTTP endpoint beside the application: ``/metrics`` and the status routes.

* :mod:`.server` - the bounded WSGI server (heads read by us, evicting the oldest unfinished
  head, TLS, basic auth) that ``instrument()`` and the commands start;
* :mod:`.status` - ``/status`` (JSON), ``/events`` (server-sent events) and ``/`` (the page),
  mounted on that server;
* :mod:`.status_page` - the page's server-side rendering;
* :mod:`.routes` - how ``instrument()`` mounts the status routes: loaded at their first
  request; :mod:`.history` - the page's latency history, started with the endpoint;
* :mod:`.failure` - the one wording of an endpoint that cannot start.

Importing this package starts nothing.
"""
