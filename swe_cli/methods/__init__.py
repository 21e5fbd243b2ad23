"""Edit methods: the closed-form solvers and, per method, how it reads the workspace."""
