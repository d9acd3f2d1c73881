"""`cifarbench bench`: the runner, isolated row workers, scenarios, metrics, reports and compare."""
