"""``headway bench ...`` implementations. Each prints JSON on stdout."""
