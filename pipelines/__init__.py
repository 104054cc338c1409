"""The kfp pipeline, its local and Kubernetes runners, and the `esmm` command line."""
