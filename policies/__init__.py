"""Built-in policy templates shipped with agentsup (YAML files beside this one)."""
