"""The pipeline stages: each reads the workspace, calls a method or io, and records itself."""
