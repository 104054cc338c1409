"""What the compiled pipeline expects of the cluster; ``k8s/`` creates exactly these (tests/test_k8s.py checks).

The push step mounts the model store where TF Serving's model config expects it, so the
pipeline's ``serving_base`` on Kubernetes is ``MODEL_STORE_MOUNT`` and a blessed model lands in
``<MODEL_STORE_MOUNT>/<push.model_name>/<version>/``, the ``base_path`` TF Serving serves.
"""
MODEL_STORE_PVC = "esmm-model-store"
MODEL_STORE_MOUNT = "/models"
WORK_PVC = "esmm-pipeline-work"
WORK_MOUNT = "/work"
# The steps' scratch space (an emptyDir of kubernetes.scratch_storage; TMPDIR points there).
SCRATCH_MOUNT = "/scratch"
SERVICE_ACCOUNT = "esmm-pipeline"
