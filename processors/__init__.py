"""Stream processors: the pure fold of events into run and step state, and its faust hosts."""
