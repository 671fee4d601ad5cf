"""PySpark's worker daemon with medtl's model stack imported once, before it forks: every Python worker on an
executor then starts warm (torch, MONAI and the pyfunc already loaded, shared copy-on-write) instead of
spending ~10 s of CPU importing them itself. Spark runs it as ``spark.python.daemon.module``."""

import medtl.mlflow_model  # noqa: F401 - the import is the point
from pyspark.daemon import manager

if __name__ == "__main__":
    manager()
