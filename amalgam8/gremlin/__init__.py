"""
Gremlin (SPEC A6, B5): resilience recipes that pass or fail on a live mesh.

- L{amalgam8.gremlin.model}: the values every part shares (services, edges, scenarios,
  checks, results) and the parameter tables of scenarios and checks.
- L{amalgam8.gremlin.recipe}: recipe files -> a L{Recipe}, and a recipe -> rules.
- L{amalgam8.gremlin.checks}: the checks, run in one pass over trace records.
- L{amalgam8.gremlin.traces}: where trace records come from (the controller, log files).
- L{amalgam8.gremlin.load}: test traffic (N requests through a gateway, or a load script).
- L{amalgam8.gremlin.run}: a whole recipe run (push, load, wait, check, clean up).
"""
