"""The fleet below the engine: what it is made of, what it reports, and whether a run may start.

    context     `Fleet` (one app's adapters built from its config), `Fleet.observe` (the one
                read of the fleet: a `Sighting`), the app's last run
    preflight   the checks before a deployment touches anything (`preflight`), and the
                refusals they give: a run left unfinished, a mixed fleet, an unsafe pool

Nothing here orders a host's steps or decides a verdict: that is the engine's. The engine,
`status`, `serve`, the dry-run and the bench all read the fleet through this package; adapters
never import it (scripts/check_layers.py).
"""
