"""The head: the cluster's control plane (node table, jobs). Never on the task path."""
