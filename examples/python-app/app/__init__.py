"""A tiny HTTP app for the imagedsl example."""
