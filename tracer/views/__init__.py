"""Views: what a person sees (lines, JSON, the live dashboard), built from model values only."""
