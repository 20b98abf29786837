"""The deploy tier: deploy/ built, run and scraped as a cluster would (root, podman)."""
