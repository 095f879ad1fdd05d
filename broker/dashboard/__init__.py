"""The web Dashboard: pages served by the admin API under ``/dashboard/`` (see ``docs/dashboard.md``).

``views.mount(admin_app, broker_app)`` adds it to the admin API's aiohttp application.
"""
